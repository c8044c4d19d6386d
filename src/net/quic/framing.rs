//! RPC framing on a QUIC stream: one length-prefixed postcard frame each way, at most
//! [`FRAME_BYTES_MAX`], read without trusting the length prefix with an allocation.

use quinn::{ReadError, RecvStream};
use serde::Serialize;

use crate::core::limits::RECORD_BYTES_MAX;

/// Largest frame payload (the postcard bytes after the length prefix), in bytes.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
// A frame holds at least 64 worst-case ledger records (a replication or snapshot chunk), and
// its length fits the u32 prefix.
const _: () = assert!(FRAME_BYTES_MAX >= 64 * RECORD_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
// A page of a paged query, cut at its byte bound, with its last item and the envelope.
const _: () = assert!(crate::wire::query::PAGE_ANSWER_BYTES_MAX + 2 * RECORD_BYTES_MAX < FRAME_BYTES_MAX);
// A full AppendEntries request (the proposer bounds batches by bytes) must fit one frame.
const _: () = assert!(crate::raft::proposer::APPEND_ENTRIES_BYTES_MAX < FRAME_BYTES_MAX);
/// Initial buffer for reading a frame; it grows with data actually received, so a length
/// prefix alone never makes us allocate.
const FRAME_READ_CHUNK: usize = 64 * 1024;

/// Encodes `value` as one frame: `u32` big-endian payload length, then the postcard bytes.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let buf = postcard::to_extend(value, vec![0u8; 4]).map_err(|e| format!("cannot encode: {e}"))?;
    let n = buf.len() - 4;
    if n > FRAME_BYTES_MAX {
        return Err(format!("frame of {n} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"));
    }
    let mut buf = buf;
    buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
    Ok(buf)
}

#[derive(Debug)]
pub(super) enum FrameError {
    /// The length prefix exceeds [`FRAME_BYTES_MAX`].
    TooLarge(usize),
    /// The stream ended inside the frame.
    Truncated { got: usize, want: usize },
    /// The stream or connection failed.
    Stream(ReadError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"),
            FrameError::Truncated { got, want } => write!(f, "stream ended after {got} of {want} bytes"),
            FrameError::Stream(e) => write!(f, "{e}"),
        }
    }
}

/// The next frame of a stream that carries several, or `None` when the sender finished the
/// stream at a frame's boundary.
pub(super) async fn read_next_frame(recv: &mut RecvStream) -> Result<Option<Vec<u8>>, FrameError> {
    match read_frame(recv).await {
        Ok(frame) => Ok(Some(frame)),
        Err(FrameError::Truncated { got: 0, want: 4 }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(got) => FrameError::Truncated { got, want: 4 },
        quinn::ReadExactError::ReadError(e) => FrameError::Stream(e),
    })?;
    let want = u32::from_be_bytes(len) as usize;
    if want > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(want));
    }
    let mut buf = Vec::with_capacity(want.min(FRAME_READ_CHUNK));
    while buf.len() < want {
        match recv.read_chunk(want - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated { got: buf.len(), want }),
            Err(e) => return Err(FrameError::Stream(e)),
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::RpcRequest;

    #[test]
    fn frames_carry_a_big_endian_length() {
        let f = encode_frame(&RpcRequest::ReadIndex).expect("frame");
        let n = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(n, f.len() - 4);
        let back: RpcRequest = postcard::from_bytes(&f[4..]).expect("decode");
        assert!(matches!(back, RpcRequest::ReadIndex));
    }

    #[test]
    fn oversized_frames_are_refused_when_encoding() {
        let big = vec![0u8; FRAME_BYTES_MAX + 1];
        assert!(encode_frame(&big).is_err());
    }
}
