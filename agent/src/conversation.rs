//! What a call has said so far, kept in the shape every reference model's chat template
//! accepts, and the one way a call builds the messages it sends to the LLM.
//!
//! vLLM serving `google/gemma-3-*-it` renders the request with Gemma 3's chat template, which
//! folds a leading system message into the first user turn and answers 400 unless the rest
//! alternates user, assistant, user, ... starting with the user. A phone call does not have
//! that shape by itself: the agent speaks first (the greeting), a reply the caller heard
//! nothing of leaves a caller message with no answer, and key presses arrive between
//! utterances. So [`Conversation`] normalises as it records, and every request it builds is:
//!
//! - the system prompt first, when there is one;
//! - then turns that alternate strictly, starting and ending with the caller;
//! - with consecutive messages of one side merged into one (the caller's on separate lines,
//!   as separate utterances or key presses; the agent's with a space, as one stretch of
//!   speech);
//! - and, when the agent spoke before the caller did, a synthetic caller turn
//!   [`CALL_CONNECTED`] before it.
//!
//! Tool calls ([`crate::tools`]) follow the rules of Gemma 3's tool template as vLLM serves
//! it (`gemma3_tools_refusal`): an assistant message that calls tools, then one tool message
//! per call, both left out of the alternation; the agent's words after them are its turn.
//! A caller who speaks before the agent said anything after a tool exchange would put two
//! caller turns in a row, so the agent's turn is then [`SAID_NOTHING`].
//!
//! The greeting becomes an agent turn after `[call connected]` rather than a line folded into
//! the system prompt: the model then sees its own words in its own role, so it knows it has
//! greeted (and does not greet again) and treats the greeting like every later thing it
//! said; the bracketed marker is the same convention as `[caller pressed 5]` for what the
//! caller did rather than said; and the configured system prompt stays as written.

use crate::backend::{ChatMessage, Role, ToolCall};

/// The caller's turn that stands before anything the agent says first (the greeting).
pub const CALL_CONNECTED: &str = "[call connected]";

/// The agent's turn after a tool exchange when the caller heard nothing more of it: the
/// same mark a clause cut short ends with.
pub const SAID_NOTHING: &str = "…";

/// The call so far: the system prompt and what each side said, alternating from the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    system_prompt: String,
    /// Alternating user and assistant messages, starting with the user, none empty.
    turns: Vec<ChatMessage>,
}

impl Conversation {
    /// An empty call with the persona's system prompt (empty: no system message).
    pub fn new(system_prompt: &str) -> Self {
        Self {
            system_prompt: system_prompt.trim().to_string(),
            turns: Vec::new(),
        }
    }

    /// Records what the caller said or did (a transcript, `[caller pressed 5]`); it joins
    /// the caller's previous message when the agent has said nothing heard since.
    pub fn caller(&mut self, text: &str) {
        push(&mut self.turns, Role::User, text);
    }

    /// Records what the caller heard the agent say.
    pub fn agent(&mut self, text: &str) {
        push(&mut self.turns, Role::Assistant, text);
    }

    /// Records tool calls the agent made, with what the caller heard it say in the same
    /// reply (`said`, possibly nothing), and their results (one per call, in order). The
    /// words go in the message that calls, as the model wrote them: as a message of their
    /// own they would put two agent turns in a row around the exchange.
    pub fn tools(&mut self, said: &str, calls: Vec<ToolCall>, results: Vec<ChatMessage>) {
        if calls.is_empty() {
            self.agent(said);
            return;
        }
        if self.turns.is_empty() {
            self.turns
                .push(ChatMessage::new(Role::User, CALL_CONNECTED));
        }
        self.turns.push(ChatMessage::calling(said.trim(), calls));
        self.turns.extend(results);
    }

    /// Every message so far, for a request that goes on from tool results (the model reads
    /// them and speaks).
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(self.turns.len() + 1);
        if !self.system_prompt.is_empty() {
            messages.push(ChatMessage::new(Role::System, self.system_prompt.clone()));
        }
        messages.extend(self.turns.iter().cloned());
        messages
    }

    /// The messages that ask the LLM to answer `caller`, said now, after everything recorded;
    /// `None` when `caller` is empty (there is nothing new to answer). The conversation
    /// itself is unchanged: the turn records `caller` once it is over.
    pub fn request(&self, caller: &str) -> Option<Vec<ChatMessage>> {
        if caller.trim().is_empty() {
            return None;
        }
        let mut messages = Vec::with_capacity(self.turns.len() + 2);
        if !self.system_prompt.is_empty() {
            messages.push(ChatMessage::new(Role::System, self.system_prompt.clone()));
        }
        let mut turns = self.turns.clone();
        push(&mut turns, Role::User, caller);
        messages.extend(turns);
        Some(messages)
    }

    /// The messages that ask the LLM whether the caller, who has said `transcript` so far,
    /// has finished: [`Conversation::request`] with the words left open
    /// ([`crate::turn::open_words`]); `None` when there are no words to judge.
    pub fn judging(&self, transcript: &str) -> Option<Vec<ChatMessage>> {
        self.request(crate::turn::open_words(transcript))
    }
}

/// Appends `text` from `role` to `turns`, keeping them alternating from the user.
fn push(turns: &mut Vec<ChatMessage>, role: Role, text: &str) {
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    if turns.is_empty() && role == Role::Assistant {
        turns.push(ChatMessage::new(Role::User, CALL_CONNECTED));
    }
    if role == Role::User && turns.last().is_some_and(|m| m.role == Role::Tool) {
        turns.push(ChatMessage::new(Role::Assistant, SAID_NOTHING));
    }
    match turns.last_mut() {
        // Words never join a tool exchange: they are a turn of their own after it.
        Some(last) if last.role == role && last.tool_calls.is_empty() => {
            last.content
                .push(if role == Role::User { '\n' } else { ' ' });
            last.content.push_str(text);
        }
        _ => turns.push(ChatMessage::new(role, text)),
    }
}

#[cfg(test)]
mod tests {
    use grokcast_engines::llm::{gemma3_accepts, gemma3_tools_refusal};

    use super::*;

    const SYSTEM: &str = "You are the receptionist of Example Dental.";

    fn said(messages: &[ChatMessage]) -> Vec<(Role, &str)> {
        messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect()
    }

    /// The shape every request must have, whatever the call did.
    fn assert_well_formed(messages: &[ChatMessage]) {
        // Tool exchanges stand outside the plain template's order (vLLM's tool template
        // leaves them out of its check).
        let spoken: Vec<&ChatMessage> = messages
            .iter()
            .filter(|m| m.role != Role::Tool && m.tool_calls.is_empty())
            .collect();
        let roles: Vec<Role> = spoken.iter().map(|m| m.role).collect();
        assert!(gemma3_accepts(&roles), "{roles:?}");
        assert_eq!(gemma3_tools_refusal(messages), None);
        assert_eq!(roles.last(), Some(&Role::User), "{roles:?}");
        assert!(
            roles.iter().skip(1).all(|r| *r != Role::System),
            "{roles:?}"
        );
        assert!(spoken.iter().all(|m| !m.content.trim().is_empty()));
    }

    #[test]
    fn a_judgement_asks_about_the_open_words_after_the_call_so_far() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello! How can I help?");
        let messages = c.judging(" I'd like a pizza with. ").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            said(&messages).last(),
            Some(&(Role::User, "I'd like a pizza with")),
            "STT's closing period is left off"
        );
        assert_eq!(
            said(&c.judging("Can you repeat that?").unwrap()).last(),
            Some(&(Role::User, "Can you repeat that?"))
        );
        assert_eq!(c.judging("."), None, "no words, nothing to judge");
    }

    #[test]
    fn the_greeting_follows_a_call_connected_turn() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello! How can I help you today?");
        let messages = c.request("What are your opening hours?").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            said(&messages),
            [
                (Role::System, SYSTEM),
                (Role::User, CALL_CONNECTED),
                (Role::Assistant, "Hello! How can I help you today?"),
                (Role::User, "What are your opening hours?"),
            ]
        );
    }

    #[test]
    fn without_greeting_or_system_prompt_the_caller_comes_first() {
        let c = Conversation::new("  ");
        let messages = c.request("Hi").unwrap();
        assert_eq!(said(&messages), [(Role::User, "Hi")]);
    }

    #[test]
    fn consecutive_messages_of_one_side_are_merged() {
        let mut c = Conversation::new(SYSTEM);
        c.caller("Hi.");
        c.caller("Are you there?");
        c.agent("Yes.");
        c.agent("How can I help?");
        let messages = c.request("Book me in.").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            said(&messages),
            [
                (Role::System, SYSTEM),
                (Role::User, "Hi.\nAre you there?"),
                (Role::Assistant, "Yes. How can I help?"),
                (Role::User, "Book me in."),
            ]
        );
    }

    #[test]
    fn a_reply_the_caller_heard_nothing_of_leaves_the_question_to_join_the_next() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello!");
        // The caller spoke again before the first clause of the reply was played: the turn
        // records the question and no agent text.
        c.caller("What time do you open?");
        c.agent("");
        let messages = c.request("Sorry, on Saturday I mean.").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            messages.last().map(|m| m.content.as_str()),
            Some("What time do you open?\nSorry, on Saturday I mean.")
        );
        assert_eq!(messages.len(), 4, "{:?}", said(&messages));
    }

    #[test]
    fn a_key_press_is_the_callers_and_merges_likewise() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello!");
        let messages = c.request("[caller pressed 5]").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            said(&messages).last(),
            Some(&(Role::User, "[caller pressed 5]"))
        );
        // Pressed while the answer to a question was still being prepared.
        c.caller("Can I speak to someone?");
        let messages = c.request("[caller pressed 0]").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            said(&messages).last(),
            Some(&(Role::User, "Can I speak to someone?\n[caller pressed 0]"))
        );
    }

    #[test]
    fn a_barge_in_keeps_what_was_heard_in_the_agents_turn() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello!");
        c.caller("What are your hours?");
        c.agent("We open at nine.");
        let messages = c.request("Actually, only Friday.").unwrap();
        assert_well_formed(&messages);
        assert_eq!(
            said(&messages)[4..],
            [
                (Role::Assistant, "We open at nine."),
                (Role::User, "Actually, only Friday."),
            ]
        );
    }

    #[test]
    fn nothing_to_answer_is_no_request() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello!");
        assert_eq!(c.request(" \n"), None);
    }

    #[test]
    fn a_request_leaves_the_conversation_as_it_was() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello!");
        let before = c.clone();
        let _ = c.request("Hi");
        assert_eq!(c, before);
    }

    #[test]
    fn a_tool_exchange_sits_between_the_callers_words_and_the_agents() {
        let mut c = Conversation::new(SYSTEM);
        c.agent("Hello!");
        c.caller("Put me through to sales.");
        c.tools(
            "One moment.",
            vec![ToolCall::new(
                "c1",
                "transfer_call",
                r#"{"target":"sales"}"#,
            )],
            vec![ChatMessage::tool_result("c1", r#"{"ok":true}"#)],
        );
        // The request that goes on from the result ends on it.
        let going_on = c.messages();
        assert_eq!(going_on.last().map(|m| m.role), Some(Role::Tool));
        assert_eq!(gemma3_tools_refusal(&going_on), None);
        c.agent("Transferring you now.");
        let messages = c.request("Thanks.").unwrap();
        assert_well_formed(&messages);
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Assistant,
                Role::User
            ]
        );
        assert_eq!(messages[4].tool_calls.len(), 1);
        assert_eq!(messages[4].content, "One moment.", "said with the call");
        assert_eq!(
            messages[6].content, "Transferring you now.",
            "not merged into the call"
        );
    }

    #[test]
    fn a_caller_who_speaks_right_after_a_tool_exchange_follows_an_agent_turn() {
        let mut c = Conversation::new(SYSTEM);
        c.caller("Press one for me.");
        c.tools(
            "",
            vec![ToolCall::new("c1", "send_dtmf", r#"{"digits":"1"}"#)],
            vec![ChatMessage::tool_result("c1", r#"{"ok":true}"#)],
        );
        // The caller barged in before the agent said anything after the tones.
        c.agent("");
        let messages = c.request("Hello?").unwrap();
        assert_well_formed(&messages);
        assert_eq!(messages[messages.len() - 2].content, SAID_NOTHING);
    }
}
