//! `echo`: every byte back, unchanged (RFC 862).
//!
//! There is no state at all: the type exists so that [`Session`](super::Session) can name it,
//! and so the protocol has a home for its tests like the others.

/// An echo session. Stateless: the reply to a byte is the byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

#[cfg(test)]
mod tests {
    use super::super::testing::feed;
    use super::super::{Arrival, Flow, Limits, Session};
    use crate::service::ProtocolKind;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn echo_returns_input_however_chunked(
            input in proptest::collection::vec(any::<u8>(), 0..2048),
            mut cuts in proptest::collection::vec(0usize..2048, 0..8),
        ) {
            cuts.sort_unstable();
            let mut session = Session::new(ProtocolKind::Echo, Limits::default()).unwrap();
            let (out, flow) = feed(&mut session, &input, &cuts, Arrival::Drained);
            prop_assert_eq!(flow, Flow::Continue);
            prop_assert_eq!(out, input);
        }
    }
}
