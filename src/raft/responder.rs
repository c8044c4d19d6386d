//! How a write's outcome leaves openraft: a callback run where the entry is applied.
//!
//! openraft's own responder is a channel its `client_write` awaits, so a proposer that sent a
//! batch through it paid a second wake-up (its task, then each writer). With
//! [`FnResponder`] the proposer hands openraft a closure that answers every writer of the batch
//! directly, from the state machine's apply.

use std::fmt;

use openraft::raft::responder::Responder;
use openraft::OptionalSend;

use super::TypeConfig;

/// A responder that calls its closure with the result, once. Dropped without a result (openraft
/// stopped before it answered), it calls nothing: whatever the closure owns is dropped with it.
pub struct FnResponder<T>(Box<dyn FnOnce(T) + Send>);

impl<T> FnResponder<T> {
    /// A responder that calls `f` with the result.
    pub fn new(f: impl FnOnce(T) + Send + 'static) -> Self {
        FnResponder(Box::new(f))
    }
}

impl<T> fmt::Debug for FnResponder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnResponder")
    }
}

impl<T: OptionalSend + 'static> Responder<TypeConfig, T> for FnResponder<T> {
    fn on_complete(self, result: T) {
        (self.0)(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closure_gets_the_result_once_and_a_dropped_responder_calls_nothing() {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = FnResponder::new(move |v: u32| tx.send(v).expect("receiver alive"));
        Responder::<TypeConfig, u32>::on_complete(r, 7);
        assert_eq!(rx.recv().ok(), Some(7));
        assert!(rx.recv().is_err(), "called once, then dropped with its sender");

        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        drop(FnResponder::new(move |v: u32| tx.send(v).expect("receiver alive")));
        assert!(rx.recv().is_err());
    }
}
