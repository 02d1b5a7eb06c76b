//! Paces outbound audio by an absolute clock.
//!
//! Twilio plays what it receives and buffers the rest. Sending faster than real time makes
//! barge-in slow (a `clear` must then drop seconds of queued audio); sending slower makes the
//! caller hear gaps. The pacer keeps a *playhead*, the instant Twilio's buffer will run dry, and
//! lets the next 20 ms frame go once the playhead is less than `lead` ahead of now. Deadlines
//! are computed from the playhead, never from "now + 20 ms", so scheduling jitter never
//! accumulates into drift.

use std::time::Duration;

use tokio::time::Instant;

/// Duration of one Twilio frame (160 samples at 8 kHz).
pub const FRAME: Duration = Duration::from_millis(20);

/// Mu-law bytes in one frame.
pub const FRAME_BYTES: usize = 160;

/// How one frame went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameTiming {
    /// Twilio still had audio buffered: the caller hears no gap.
    OnTime,
    /// The buffer had run dry in the middle of a segment: the caller heard a gap (underrun).
    Late,
    /// First frame after silence; nothing to be late against.
    Started,
}

/// Absolute-clock pacer for one call's outbound audio.
#[derive(Debug, Clone)]
pub struct Pacer {
    lead: Duration,
    playhead: Option<Instant>,
    in_segment: bool,
}

impl Pacer {
    /// A pacer that keeps up to `lead` of audio buffered at Twilio.
    pub fn new(lead: Duration) -> Self {
        Self {
            lead,
            playhead: None,
            in_segment: false,
        }
    }

    /// When the next frame may be sent.
    pub fn next_send_at(&self, now: Instant) -> Instant {
        match self.playhead {
            Some(playhead) if playhead > now + self.lead => playhead - self.lead,
            _ => now,
        }
    }

    /// Records that a frame was sent at `now`.
    pub fn frame_sent(&mut self, now: Instant) -> FrameTiming {
        let (start, timing) = match self.playhead {
            Some(playhead) if playhead >= now => (playhead, FrameTiming::OnTime),
            Some(_) if self.in_segment => (now, FrameTiming::Late),
            _ => (now, FrameTiming::Started),
        };
        self.in_segment = true;
        self.playhead = Some(start + FRAME);
        timing
    }

    /// The current segment's audio is all sent; a gap before the next one is not an underrun.
    pub fn end_segment(&mut self) {
        self.in_segment = false;
    }

    /// Twilio's buffer was cleared (barge-in): forget the playhead.
    pub fn clear(&mut self) {
        self.playhead = None;
        self.in_segment = false;
    }

    /// When everything sent so far will have been played, if anything is still playing.
    pub fn playing_until(&self, now: Instant) -> Option<Instant> {
        self.playhead.filter(|p| *p > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAD: Duration = Duration::from_millis(80);

    #[test]
    fn first_frames_go_at_once_until_the_lead_is_buffered() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        let mut sent_at_start = 0;
        while p.next_send_at(t0) <= t0 {
            p.frame_sent(t0);
            sent_at_start += 1;
        }
        // 80 ms lead plus the frame being played: five frames up front.
        assert_eq!(sent_at_start, 5);
        assert_eq!(p.next_send_at(t0), t0 + Duration::from_millis(20));
    }

    #[test]
    fn late_wakeups_do_not_drift_the_schedule() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        let mut now = t0;
        for i in 0..3000u64 {
            let due = p.next_send_at(now);
            // Wake up to 7 ms late, as a loaded runtime does.
            now = due.max(now) + Duration::from_micros((i * 7919) % 7000);
            assert_ne!(p.frame_sent(now), FrameTiming::Late, "frame {i}");
        }
        // 3000 frames are exactly 60 s of audio, whatever the wake-up jitter was.
        assert_eq!(p.playing_until(t0), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_stall_mid_segment_is_an_underrun_but_a_pause_between_segments_is_not() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        assert_eq!(p.frame_sent(t0), FrameTiming::Started);
        assert_eq!(p.frame_sent(t0), FrameTiming::OnTime);
        let later = t0 + Duration::from_millis(500);
        assert_eq!(p.frame_sent(later), FrameTiming::Late);
        p.end_segment();
        let much_later = later + Duration::from_secs(2);
        assert_eq!(p.frame_sent(much_later), FrameTiming::Started);
    }

    #[test]
    fn clear_forgets_buffered_audio() {
        let t0 = Instant::now();
        let mut p = Pacer::new(LEAD);
        for _ in 0..10 {
            p.frame_sent(t0);
        }
        assert!(p.playing_until(t0).is_some());
        p.clear();
        assert_eq!(p.playing_until(t0), None);
        assert_eq!(p.next_send_at(t0), t0);
    }
}
