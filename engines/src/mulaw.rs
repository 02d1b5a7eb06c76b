//! G.711 mu-law, the codec Twilio Media Streams carry in both directions (8 kHz, 8 bits).

/// Bias added before the segment search, from the G.711 reference encoder.
const BIAS: i32 = 0x84;
/// Largest magnitude the encoder represents before clipping.
const CLIP: i32 = 32635;

/// Encodes one 16-bit linear PCM sample as a mu-law byte.
pub fn encode_sample(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let magnitude = magnitude.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit among bits 7..=14.
    let exponent = (31 - magnitude.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Decodes one mu-law byte to 16-bit linear PCM.
pub fn decode_sample(byte: u8) -> i16 {
    let inverted = !byte;
    let exponent = (inverted >> 4) & 0x07;
    let mantissa = i32::from(inverted & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    let value = if inverted & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    };
    value as i16
}

/// Decodes mu-law bytes into `out` as floats in [-1, 1]. `out` must be at least as long.
pub fn decode_into(bytes: &[u8], out: &mut [f32]) {
    for (byte, sample) in bytes.iter().zip(out.iter_mut()) {
        *sample = f32::from(decode_sample(*byte)) / 32768.0;
    }
}

/// Encodes floats in [-1, 1] (clipped outside) into mu-law bytes in `out`.
pub fn encode_into(samples: &[f32], out: &mut [u8]) {
    for (sample, byte) in samples.iter().zip(out.iter_mut()) {
        let scaled = (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        *byte = encode_sample(scaled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values of the ITU-T G.711 mu-law decoding table (as printed in the recommendation's
    // reference implementations), for the loudest and quietest segments of each sign.
    const TABLE_00_0F: [i16; 16] = [
        -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956, -23932, -22908, -21884,
        -20860, -19836, -18812, -17788, -16764,
    ];
    const TABLE_70_7F: [i16; 16] = [
        -120, -112, -104, -96, -88, -80, -72, -64, -56, -48, -40, -32, -24, -16, -8, 0,
    ];
    const TABLE_80_8F: [i16; 16] = [
        32124, 31100, 30076, 29052, 28028, 27004, 25980, 24956, 23932, 22908, 21884, 20860, 19836,
        18812, 17788, 16764,
    ];
    const TABLE_F0_FF: [i16; 16] = [
        120, 112, 104, 96, 88, 80, 72, 64, 56, 48, 40, 32, 24, 16, 8, 0,
    ];

    #[test]
    fn decode_matches_g711_table() {
        for (offset, table) in [
            (0x00, TABLE_00_0F),
            (0x70, TABLE_70_7F),
            (0x80, TABLE_80_8F),
            (0xF0, TABLE_F0_FF),
        ] {
            for (i, expected) in table.iter().enumerate() {
                assert_eq!(
                    decode_sample(offset + i as u8),
                    *expected,
                    "byte {:#04x}",
                    offset + i as u8
                );
            }
        }
        // Segment boundaries in the middle of the table.
        assert_eq!(decode_sample(0x40), -1884);
        assert_eq!(decode_sample(0xC0), 1884);
    }

    #[test]
    fn encode_matches_g711_reference_points() {
        assert_eq!(encode_sample(0), 0xFF);
        assert_eq!(encode_sample(-1), 0x7F);
        assert_eq!(encode_sample(i16::MAX), 0x80);
        assert_eq!(encode_sample(i16::MIN), 0x00);
        assert_eq!(encode_sample(1884), 0xC0);
        assert_eq!(encode_sample(-1884), 0x40);
    }

    #[test]
    fn every_code_round_trips_through_its_decoded_value() {
        for byte in 0..=255u8 {
            let decoded = decode_sample(byte);
            let again = encode_sample(decoded);
            // 0x7F and 0xFF are negative and positive zero; both decode to 0.
            if decoded == 0 {
                assert_eq!(again, 0xFF);
            } else {
                assert_eq!(again, byte, "byte {byte:#04x} decoded to {decoded}");
            }
        }
    }

    #[test]
    fn quantisation_error_stays_within_half_a_step() {
        for sample in (-32000i16..32000).step_by(7) {
            let decoded = i32::from(decode_sample(encode_sample(sample)));
            let magnitude = i32::from(sample).abs();
            // A segment's step is 1/16 of its biased lower bound, so it never exceeds this.
            let step = (magnitude + BIAS) / 16;
            assert!(
                (decoded - i32::from(sample)).abs() <= step / 2 + 1,
                "{sample} -> {decoded}"
            );
        }
    }

    #[test]
    fn float_buffers_round_trip() {
        let samples: Vec<f32> = (0..160).map(|i| (i as f32 / 10.0).sin() * 0.5).collect();
        let mut bytes = [0u8; 160];
        encode_into(&samples, &mut bytes);
        let mut back = [0f32; 160];
        decode_into(&bytes, &mut back);
        for (a, b) in samples.iter().zip(back.iter()) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
    }
}
