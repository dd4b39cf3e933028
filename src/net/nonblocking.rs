//! What every user of non-blocking sockets here needs: the reactor's connections and the load
//! generator's both write "as much as the socket takes now".

use std::io::{self, Write};

/// Writes until `bytes` are all written or the socket would block; returns how many were written.
///
/// `WouldBlock` is not an error here — it is the answer "the socket is full, come back when it is
/// writable". A write of zero bytes is (`WriteZero`): the socket can take no more, ever.
pub(crate) fn write_until_blocked(stream: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(count) => written += count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes `room` bytes, then would block.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let taken = bytes.len().min(self.room).min(3);
            self.room -= taken;
            Ok(taken)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stops_at_would_block_and_reports_what_went() {
        assert_eq!(
            write_until_blocked(&mut Full { room: 7 }, b"0123456789").unwrap(),
            7
        );
        assert_eq!(
            write_until_blocked(&mut Full { room: 70 }, b"0123456789").unwrap(),
            10
        );
    }
}
