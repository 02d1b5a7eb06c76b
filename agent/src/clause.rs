//! Cuts streamed LLM text into clauses, so each can be spoken while the model keeps writing.
//!
//! A clause ends at `.`, `!`, `?` (or `;`, `:`, `,` once it is long enough to be worth a TTS
//! request) followed by whitespace. Decimal points, common abbreviations and initials do not end
//! a clause. Markdown emphasis and list markers, which a voice must not read out, are dropped.

/// Clauses shorter than this do not end at a comma, semicolon or colon.
const MIN_SOFT_CLAUSE_CHARS: usize = 24;

/// Abbreviations whose trailing dot does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "jr", "sr", "mt", "approx",
];

/// A clause without surrounding space and list bullets.
fn speakable(clause: &str) -> &str {
    clause.trim().trim_start_matches(['-', '•']).trim_start()
}

/// Accumulates tokens and yields complete clauses.
#[derive(Debug, Default)]
pub struct ClauseSplitter {
    buffer: String,
}

impl ClauseSplitter {
    /// An empty splitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns every clause it completed, in order.
    pub fn push(&mut self, token: &str) -> Vec<String> {
        for c in token.chars() {
            if !matches!(c, '*' | '#' | '`' | '_') {
                self.buffer.push(c);
            }
        }
        let mut clauses = Vec::new();
        while let Some(end) = self.boundary() {
            let clause: String = self.buffer.drain(..end).collect();
            let clause = speakable(&clause);
            if clause.chars().any(char::is_alphanumeric) {
                clauses.push(clause.to_string());
            }
        }
        clauses
    }

    /// The text left when the stream ends, if any is speakable.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = speakable(&rest);
        rest.chars()
            .any(char::is_alphanumeric)
            .then(|| rest.to_string())
    }

    /// Byte index just past the first clause boundary (punctuation followed by whitespace).
    fn boundary(&self) -> Option<usize> {
        let text = &self.buffer;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let &(next_i, next) = chars.peek()?;
            if !next.is_whitespace() {
                continue;
            }
            let ends = match c {
                '.' => !self.is_abbreviation(&text[..i]),
                '!' | '?' => true,
                ',' | ';' | ':' => text[..i].trim().chars().count() >= MIN_SOFT_CLAUSE_CHARS,
                _ => false,
            };
            if ends {
                return Some(next_i);
            }
        }
        None
    }

    fn is_abbreviation(&self, before_dot: &str) -> bool {
        let word = before_dot
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("");
        let lower = word.to_lowercase();
        // A single capital letter is an initial ("J. Smith").
        let initial = word.len() == 1 && word.chars().all(|c| c.is_ascii_uppercase());
        initial || ABBREVIATIONS.contains(&lower.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(tokens: &[&str]) -> Vec<String> {
        let mut s = ClauseSplitter::new();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| s.push(t)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = ClauseSplitter::new();
        assert!(s.push("Sure").is_empty());
        assert!(s.push(", I can").is_empty());
        assert!(
            s.push(" help.").is_empty(),
            "the dot might still be a decimal point"
        );
        assert_eq!(s.push(" What"), vec!["Sure, I can help."]);
        assert_eq!(s.push(" time? Noon"), vec!["What time?"]);
        assert_eq!(s.finish(), Some("Noon".into()));
    }

    #[test]
    fn token_boundaries_do_not_matter() {
        let text =
            "Hello there! Your order ships on Monday, the 3rd of May; expect it by Friday. Bye.";
        let whole = split(&[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let by_char = split(&chars.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(whole, by_char);
        assert_eq!(
            whole,
            vec![
                "Hello there!",
                "Your order ships on Monday,",
                "the 3rd of May; expect it by Friday.",
                "Bye."
            ]
        );
    }

    #[test]
    fn decimals_abbreviations_and_initials_do_not_split() {
        assert_eq!(
            split(&["It costs 3.50 dollars. Dr. Smith and J. R. Jones, e.g. today, will call."]),
            // The comma after a long enough clause is a boundary; the dots are not.
            vec![
                "It costs 3.50 dollars.",
                "Dr. Smith and J. R. Jones,",
                "e.g. today, will call."
            ]
        );
    }

    #[test]
    fn short_comma_phrases_stay_together() {
        assert_eq!(split(&["Yes, of course. "]), vec!["Yes, of course."]);
    }

    #[test]
    fn markdown_and_empty_pieces_are_not_spoken() {
        assert_eq!(
            split(&["**Great** question! ... ", "- ", "Ok"]),
            vec!["Great question!", "Ok"]
        );
        assert!(split(&["  ", "..."]).is_empty());
    }
}
