//! A caller that talks to the agent as the browser playground's page does: the
//! `grokcast.playground.v1` WebSocket with the token as a subprotocol, Opus packets of 20 ms
//! at 48 kHz both ways in real time, marks acknowledged as the page acknowledges them once the
//! audio before them has played. It stands for a person at the playground page; the
//! benchmark (`agent-bench --playground`) uses it to measure what that transport costs the
//! agent, next to the phone caller of [`crate::caller`].
//!
//! It follows the phone caller's script: wait for the agent to finish talking, say the next
//! utterance, time the answer from the last packet of speech sent to the first packet of the
//! answer received.

use std::time::Duration;

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Channels, MutSignals, SampleRate};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use grokcast_agent::codec;
use grokcast_agent::resample::StreamResampler;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::caller::{CallReport, CallerError, CallerOptions, TurnReport};

/// The page's sample rate and packet length (20 ms).
const RATE: u32 = 48_000;
const FRAME: usize = 960;

/// The subprotocols the page offers: the protocol, and the token in base64url.
pub fn protocols(token: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    format!("grokcast.playground.v1, token.{encoded}")
}

/// Caller audio (8 kHz mu-law) as the page's microphone gives it: 48 kHz, in 20 ms frames
/// (the last padded with silence).
pub fn frames_48k(mulaw: &[u8]) -> Result<Vec<Vec<f32>>, CallerError> {
    let mut pcm = vec![0f32; mulaw.len()];
    codec::decode_into(mulaw, &mut pcm);
    let audio_error = |e: &dyn std::fmt::Display| CallerError::Audio(e.to_string());
    let mut up = StreamResampler::new(8_000, RATE).map_err(|e| audio_error(&e))?;
    let mut audio = Vec::with_capacity(pcm.len() * 6);
    up.push(&pcm, &mut |s| audio.extend_from_slice(s))
        .map_err(|e| audio_error(&e))?;
    up.flush(&mut |s| audio.extend_from_slice(s))
        .map_err(|e| audio_error(&e))?;
    Ok(audio
        .chunks(FRAME)
        .map(|c| {
            let mut frame = c.to_vec();
            frame.resize(FRAME, 0.0);
            frame
        })
        .collect())
}

/// One playground session following `options`' script (`playground_token` set); only the
/// utterances, `quiet_before_speaking` and `reply_timeout` apply.
pub async fn place_session(
    options: &CallerOptions,
    token: &str,
) -> Result<CallReport, CallerError> {
    let url = format!(
        "{}/playground/socket",
        options
            .agent_url
            .trim_end_matches('/')
            .replacen("http", "ws", 1)
    );
    let stream_error = |message: String| CallerError::Stream {
        url: url.clone(),
        message,
    };
    let mut report = CallReport {
        call_sid: options.call_sid.clone(),
        ..CallReport::default()
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| stream_error(e.to_string()))?;
    let offered = protocols(token)
        .parse()
        .map_err(|e: http::header::InvalidHeaderValue| stream_error(e.to_string()))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", offered);
    let socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tokio_tungstenite::tungstenite::Error::Http(response))
            if response.status().as_u16() == 503 =>
        {
            report.rejected = Some("busy".into());
            return Ok(report);
        }
        Err(e) => return Err(stream_error(e.to_string())),
    };
    let (mut tx, mut rx) = socket.split();
    tx.send(Message::text(r#"{"type":"start"}"#))
        .await
        .map_err(|e| stream_error(e.to_string()))?;

    let utterances = options
        .utterances
        .iter()
        .map(|u| frames_48k(u))
        .collect::<Result<Vec<_>, _>>()?;
    let opus = |e: audiopus::Error| CallerError::Audio(format!("opus: {e}"));
    let encoder =
        Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).map_err(opus)?;
    let mut decoder = Decoder::new(SampleRate::Hz48000, Channels::Mono).map_err(opus)?;
    let silence = vec![0f32; FRAME];
    let mut packet = vec![0u8; 1500];
    let mut decoded = vec![0f32; 6 * FRAME];

    // Where the script is: listening before utterance `next`, or speaking `speaking`.
    let mut next = 0usize;
    let mut speaking: Option<(usize, usize)> = None;
    let mut listening_since = Instant::now();
    let mut last_agent_packet: Option<Instant> = None;
    let mut stopped_speaking: Option<Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                if speaking.is_none() {
                    let heard_reply = report.turns.last().map_or(report.greeting_frames > 0, |t| t.agent_frames > 0);
                    let quiet = last_agent_packet.is_none_or(|t| now - t >= options.quiet_before_speaking);
                    let timed_out = now - listening_since >= options.reply_timeout;
                    if (heard_reply && quiet) || timed_out {
                        if next == utterances.len() {
                            break;
                        }
                        speaking = Some((next, 0));
                        report.turns.push(TurnReport::default());
                        next += 1;
                    }
                }
                let frame = match &mut speaking {
                    Some((index, at)) => {
                        let frame = &utterances[*index][*at];
                        *at += 1;
                        if *at == utterances[*index].len() {
                            speaking = None;
                            stopped_speaking = Some(now);
                            listening_since = now;
                        }
                        frame
                    }
                    None => &silence,
                };
                let bytes = encoder.encode_float(frame, &mut packet).map_err(opus)?;
                tx.send(Message::binary(packet[..bytes].to_vec()))
                    .await
                    .map_err(|e| stream_error(e.to_string()))?;
            }
            message = rx.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let packet = Packet::try_from(&bytes[..]).map_err(opus)?;
                    let out = MutSignals::try_from(&mut decoded[..]).map_err(opus)?;
                    decoder.decode_float(Some(packet), out, false).map_err(opus)?;
                    let now = Instant::now();
                    last_agent_packet = Some(now);
                    match report.turns.last_mut() {
                        None => report.greeting_frames += 1,
                        Some(turn) if speaking.is_none() => {
                            if turn.latency.is_none() {
                                turn.latency = stopped_speaking.map(|s| now - s);
                            }
                            turn.agent_frames += 1;
                        }
                        Some(_) => {}
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    match value["type"].as_str() {
                        Some("mark") => {
                            let name = value["name"].as_str().unwrap_or_default().to_owned();
                            let ack = serde_json::json!({"type": "mark", "name": name});
                            tx.send(Message::text(ack.to_string()))
                                .await
                                .map_err(|e| stream_error(e.to_string()))?;
                            report.marks.push(name);
                        }
                        Some("clear") => report.clears += 1,
                        Some("error") => return Err(stream_error(format!("the agent ended the session: {value}"))),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    report.closed_by_agent = true;
                    return Ok(report);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(stream_error(e.to_string())),
            }
        }
    }
    let _ = tx.send(Message::text(r#"{"type":"stop"}"#)).await;
    let _ = tx.close().await;
    Ok(report)
}
