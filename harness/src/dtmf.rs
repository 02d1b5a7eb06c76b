//! A DTMF receiver for what a simulated caller heard: finds keypad tones in 8 kHz mu-law
//! audio, as an IVR at the far end of a call would, so a test can check the keys the agent
//! pressed (`send_dtmf`) reached the line intact.
//!
//! Each 20 ms block is measured at the eight ITU-T Q.23 frequencies with the Goertzel
//! algorithm; a block holds a key when its strongest low and strongest high frequencies
//! carry most of the block's energy and stand well above the others in their group. A key is
//! read once it holds for two blocks (40 ms, the shortest tone Q.24 asks receivers to take),
//! and again only after a block without it.
//!
//! The frequency table is the standard's, written out here again rather than taken from the
//! agent that sends the tones: a mistake in the sender's table must not hide in the receiver.

use grokcast_agent::codec;

const RATE: f32 = 8_000.0;
/// 20 ms at 8 kHz.
const BLOCK: usize = 160;
const LOW: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const HIGH: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The power of `samples` at `frequency` (Goertzel), scaled to the block's length.
fn power(samples: &[f32], frequency: f32) -> f32 {
    let coefficient = 2.0 * (std::f32::consts::TAU * frequency / RATE).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for x in samples {
        let s = x + coefficient * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coefficient * s1 * s2) / samples.len() as f32
}

/// The key one block holds, if any.
fn key_in(block: &[f32]) -> Option<char> {
    let energy: f32 = block.iter().map(|s| s * s).sum::<f32>();
    // Below about -40 dBFS there is no tone worth reading.
    if energy / (block.len() as f32) < 1e-4 {
        return None;
    }
    let strongest = |group: &[f32; 4]| {
        let powers: Vec<f32> = group.iter().map(|f| power(block, *f)).collect();
        let (at, best) = powers
            .iter()
            .copied()
            .enumerate()
            .fold((0, 0.0f32), |a, b| if b.1 > a.1 { b } else { a });
        let others = powers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, p)| *p)
            .fold(0.0f32, f32::max);
        (at, best, others)
    };
    let (row, low, low_others) = strongest(&LOW);
    let (col, high, high_others) = strongest(&HIGH);
    // A pure sine of amplitude a has Goertzel power about a^2 * N / 4 here, and mean square
    // a^2 / 2: two tones that make the block hold 2 * N / 4 / (N / 2) = 1 of its energy.
    let mean_square = energy / block.len() as f32;
    let share = (low + high) / (mean_square * block.len() as f32 / 2.0);
    let clean = low > 10.0 * low_others && high > 10.0 * high_others;
    // Twist: neither tone more than 8 dB (6.3x in power) above the other.
    let twist = low.max(high) < 6.3 * low.min(high);
    (share > 0.6 && clean && twist).then(|| KEYS[row][col])
}

/// The keys pressed in `mulaw` (8 kHz mu-law), in order.
pub fn decode(mulaw: &[u8]) -> String {
    let mut samples = vec![0.0f32; mulaw.len()];
    codec::decode_into(mulaw, &mut samples);
    let mut keys = String::new();
    let mut previous: Option<char> = None;
    let mut held = 0usize;
    let mut read = false;
    for block in samples.chunks_exact(BLOCK) {
        let key = key_in(block);
        if key.is_some() && key == previous {
            held += 1;
        } else {
            held = 1;
            read = false;
        }
        previous = key;
        if let Some(k) = key
            && held >= 2
            && !read
        {
            keys.push(k);
            read = true;
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mulaw(samples: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; samples.len()];
        codec::encode_into(samples, &mut out);
        out
    }

    #[test]
    fn reads_the_agents_key_tones_and_nothing_from_speech_or_silence() {
        let tones = grokcast_agent::tools::dtmf_tones("159#w0*D");
        assert_eq!(decode(&mulaw(&tones)), "159#0*D");
        assert_eq!(decode(&mulaw(&vec![0.0; 8000])), "");
        let voice = crate::instant::synthetic_speech("Hello there, how are you today?", 8_000);
        assert_eq!(decode(&mulaw(&voice)), "");
    }

    #[test]
    fn a_key_held_through_a_block_boundary_is_read_once() {
        // A tone starting mid-block, 100 ms long, then the same key again after a gap.
        let mut audio = vec![0.0f32; 57];
        audio.extend(grokcast_agent::tools::dtmf_tones("77"));
        assert_eq!(decode(&mulaw(&audio)), "77");
    }
}
