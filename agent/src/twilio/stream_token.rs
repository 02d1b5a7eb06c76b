//! One-time Media Stream tokens.
//!
//! Twilio signs the stream's WebSocket upgrade over the stream URL, which is the same for
//! every call: a signature captured once would open streams forever. So the signed voice
//! webhook mints a token for its call, and the TwiML carries it to Twilio as a `<Parameter>`
//! (the stream URL takes no query string); Twilio hands it back in the stream's `start`
//! message. A stream whose token is missing, malformed, expired, for another call or already
//! used is refused.
//!
//! A token is `EXPIRY.MAC`: the expiry in Unix seconds and HMAC-SHA256 over the call SID and
//! the expiry, keyed by a key derived from the Twilio auth token, which every pod of the
//! VoiceAgent shares (the webhook and the stream may reach different pods). Each pod
//! remembers the tokens it has redeemed until they expire; a token replayed to another pod
//! within its lifetime is not caught there, which the short lifetime bounds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a minted token opens a stream: Twilio connects within a second or two of the
/// webhook's answer.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// The `<Parameter>` name that carries the token.
pub const PARAMETER: &str = "streamToken";

/// Why a stream's token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The `start` message carried no token.
    #[error("the stream has no {PARAMETER} parameter")]
    Missing,
    /// Not `EXPIRY.MAC`.
    #[error("the stream token is malformed")]
    Malformed,
    /// Past its expiry.
    #[error("the stream token expired")]
    Expired,
    /// Minted for another call, or not by this VoiceAgent.
    #[error("the stream token is not for this call")]
    WrongCall,
    /// Already redeemed by a stream.
    #[error("the stream token was already used")]
    Reused,
}

/// Mints and redeems tokens for one VoiceAgent.
pub struct StreamTokens {
    key: Vec<u8>,
    lifetime: Duration,
    /// Redeemed tokens and their expiry, forgotten once expired.
    used: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTokens")
            .field("key", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl StreamTokens {
    /// Tokens keyed from the Twilio auth token (never used directly: a token leaks nothing
    /// that signs webhooks) and `scope`, the VoiceAgent's namespace and name, so another
    /// VoiceAgent on the same Twilio account cannot open this one's streams.
    pub fn new(auth_token: &str, scope: &str, lifetime: Duration) -> Self {
        let mut derive = hmac(auth_token.as_bytes());
        derive.update(b"grokcast media stream token v1|");
        derive.update(scope.as_bytes());
        Self {
            key: derive.finalize().into_bytes().to_vec(),
            lifetime,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The MAC of a call's token, ready to finish or to verify against.
    fn mac(&self, call_sid: &str, expiry: u64) -> HmacSha256 {
        let mut mac = hmac(&self.key);
        mac.update(call_sid.as_bytes());
        mac.update(b"|");
        mac.update(expiry.to_string().as_bytes());
        mac
    }

    /// A token for `call_sid`, valid from `now` for the lifetime.
    pub fn mint(&self, call_sid: &str, now: SystemTime) -> String {
        let expiry = unix(now + self.lifetime);
        format!(
            "{expiry}.{}",
            hex::encode(self.mac(call_sid, expiry).finalize().into_bytes())
        )
    }

    /// Accepts `token` for `call_sid` once.
    pub fn redeem(
        &self,
        token: Option<&str>,
        call_sid: &str,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        let (expiry, mac) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison.
        self.mac(call_sid, expiry)
            .verify_slice(&mac)
            .map_err(|_| TokenError::WrongCall)?;
        // Only the exact text `mint` writes: `+EXP`, `0EXP` or upper-case hex carry the same
        // MAC but would each look new to the record of used tokens.
        if token != format!("{expiry}.{}", hex::encode(&mac)) {
            return Err(TokenError::Malformed);
        }
        let now = unix(now);
        if now >= expiry {
            return Err(TokenError::Expired);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, until| *until > now);
        if used.insert(token.to_owned(), expiry).is_some() {
            return Err(TokenError::Reused);
        }
        Ok(())
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &str = "CA0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_opens_its_calls_stream_once() {
        let t = StreamTokens::new("auth", "voice/receptionist", TOKEN_LIFETIME);
        let now = SystemTime::now();
        let token = t.mint(CALL, now);
        assert_eq!(t.redeem(Some(&token), CALL, now), Ok(()));
        assert_eq!(t.redeem(Some(&token), CALL, now), Err(TokenError::Reused));
    }

    #[test]
    fn expired_foreign_forged_and_missing_tokens_are_refused() {
        let t = StreamTokens::new("auth", "voice/receptionist", TOKEN_LIFETIME);
        let now = SystemTime::now();
        let token = t.mint(CALL, now);
        assert_eq!(
            t.redeem(Some(&token), CALL, now + TOKEN_LIFETIME),
            Err(TokenError::Expired)
        );
        assert_eq!(
            t.redeem(Some(&token), "CAother", now),
            Err(TokenError::WrongCall)
        );
        // Another VoiceAgent's (another auth token's) token, and a later expiry forged onto a
        // real MAC, are both not for this call.
        let other =
            StreamTokens::new("other", "voice/receptionist", TOKEN_LIFETIME).mint(CALL, now);
        assert_eq!(
            t.redeem(Some(&other), CALL, now),
            Err(TokenError::WrongCall)
        );
        let (expiry, mac) = token.split_once('.').unwrap();
        let later = format!("{}.{mac}", expiry.parse::<u64>().unwrap() + 3600);
        assert_eq!(
            t.redeem(Some(&later), CALL, now),
            Err(TokenError::WrongCall)
        );
        for bad in ["", "123", "x.abcd", "123.zz"] {
            assert_eq!(
                t.redeem(Some(bad), CALL, now),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(t.redeem(None, CALL, now), Err(TokenError::Missing));
        // The same MAC written another way is not a second token.
        for variant in [
            format!("+{expiry}.{mac}"),
            format!("0{expiry}.{mac}"),
            format!("{expiry}.{}", mac.to_uppercase()),
        ] {
            assert_eq!(
                t.redeem(Some(&variant), CALL, now),
                Err(TokenError::Malformed),
                "{variant}"
            );
        }
        // Another VoiceAgent of the same account mints tokens this one refuses.
        let neighbour = StreamTokens::new("auth", "voice/sales", TOKEN_LIFETIME).mint(CALL, now);
        assert_eq!(
            t.redeem(Some(&neighbour), CALL, now),
            Err(TokenError::WrongCall)
        );
        // None of these used the real token up.
        assert_eq!(t.redeem(Some(&token), CALL, now), Ok(()));
    }

    #[test]
    fn redeemed_tokens_are_forgotten_once_expired() {
        let t = StreamTokens::new("auth", "voice/receptionist", Duration::from_secs(10));
        let now = SystemTime::now();
        for i in 0..100 {
            let call = format!("CA{i}");
            t.redeem(Some(&t.mint(&call, now)), &call, now).unwrap();
        }
        let later = now + Duration::from_secs(20);
        let call = "CAlater";
        t.redeem(Some(&t.mint(call, later)), call, later).unwrap();
        assert_eq!(t.used.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_key_is_never_printed() {
        let t = StreamTokens::new("secret-auth-token", "voice/receptionist", TOKEN_LIFETIME);
        let printed = format!("{t:?}");
        assert!(
            !printed.contains("secret") && printed.contains("[redacted]"),
            "{printed}"
        );
    }
}
