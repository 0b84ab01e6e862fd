//! Arrow IPC from outside (uploads of frames, tables, embeddings), decoded without trusting it.

use arrow::error::ArrowError;

/// Runs one step of an Arrow IPC decoder over bytes from outside. arrow-ipc panics on some
/// malformed input instead of returning an error (a buffer that points past its message: found
/// by the `upload_arrow` fuzz target); such input is refused like any other bad body, and the
/// request that sent it fails with a message rather than with a panic.
pub fn decode_untrusted<T>(step: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, ArrowError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|_| {
        Err(ArrowError::IpcError("malformed Arrow IPC: a buffer or length points outside its message".into()))
    })
}

/// The largest metadata or body one message of an Arrow IPC stream from outside may declare. A
/// record batch of an upload is a few megabytes; the bound only has to stop absurd lengths.
const MAX_IPC_MESSAGE_BYTES: u64 = 1 << 30;

/// An Arrow IPC stream from outside, with each message's declared lengths checked before the
/// decoder sees them. arrow-ipc allocates (zeroed) the body length a message declares before it
/// reads a byte of that body, so a body of a few bytes could otherwise ask for terabytes and end
/// the process (found by the `upload_arrow` fuzz target). A length past
/// `MAX_IPC_MESSAGE_BYTES` (1 GiB), or metadata that is not a message, is an `InvalidData` error.
pub struct CheckedIpcStream<R> {
    inner: R,
    /// Bytes of the current message's prefix and metadata, checked, not yet handed on.
    head: Vec<u8>,
    at: usize,
    /// Bytes of the current message's body still to pass through.
    body_left: u64,
    /// The end-of-stream marker was seen: what follows is passed through as it is.
    ended: bool,
}

impl<R: std::io::Read> CheckedIpcStream<R> {
    pub fn new(inner: R) -> Self {
        CheckedIpcStream { inner, head: Vec::new(), at: 0, body_left: 0, ended: false }
    }

    /// Reads the next message's prefix and metadata into `head` and checks them.
    fn next_message(&mut self) -> std::io::Result<()> {
        let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        self.head.clear();
        self.at = 0;
        let mut word = [0u8; 4];
        if !read_all_or_nothing(&mut self.inner, &mut word)? {
            self.ended = true;
            return Ok(());
        }
        self.head.extend_from_slice(&word);
        if word == [0xff; 4] {
            // The continuation marker of the current format; the length follows.
            if !read_all_or_nothing(&mut self.inner, &mut word)? {
                return Err(invalid("an Arrow IPC message ends after its continuation marker".into()));
            }
            self.head.extend_from_slice(&word);
        }
        let length = i32::from_le_bytes(word);
        if length == 0 {
            self.ended = true;
            return Ok(());
        }
        if length < 0 || length as u64 > MAX_IPC_MESSAGE_BYTES {
            return Err(invalid(format!("an Arrow IPC message declares {length} bytes of metadata")));
        }
        let start = self.head.len();
        self.head.resize(start + length as usize, 0);
        self.inner.read_exact(&mut self.head[start..])?;
        let message = arrow::ipc::root_as_message(&self.head[start..])
            .map_err(|e| invalid(format!("an Arrow IPC message's metadata does not parse: {e}")))?;
        let body = message.bodyLength();
        if body < 0 || body as u64 > MAX_IPC_MESSAGE_BYTES {
            return Err(invalid(format!(
                "an Arrow IPC message declares a body of {body} bytes (at most {MAX_IPC_MESSAGE_BYTES})"
            )));
        }
        self.body_left = body as u64;
        Ok(())
    }
}

/// Fills `buf`; false when the input ended before its first byte.
fn read_all_or_nothing(inner: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match inner.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<R: std::io::Read> std::io::Read for CheckedIpcStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.at < self.head.len() {
                let n = buf.len().min(self.head.len() - self.at);
                buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.ended || buf.is_empty() {
                return self.inner.read(buf);
            }
            if self.body_left > 0 {
                let want = buf.len().min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Ok(0);
                }
                self.body_left -= n as u64;
                return Ok(n);
            }
            self.next_message()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_panic_is_an_error() {
        let answer: Result<(), _> = decode_untrusted(|| panic!("index out of bounds"));
        assert!(answer.unwrap_err().to_string().contains("malformed Arrow IPC"));
        assert_eq!(decode_untrusted(|| Ok(7)).unwrap(), 7);
    }

    fn stream() -> Vec<u8> {
        use arrow::array::{ArrayRef, Int64Array, RecordBatch};
        let column: ArrayRef = std::sync::Arc::new(Int64Array::from((0..1000).collect::<Vec<i64>>()));
        let batch = RecordBatch::try_from_iter([("n", column)]).unwrap();
        let mut bytes = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).unwrap();
        writer.write(&batch).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        bytes
    }

    #[test]
    fn a_checked_stream_reads_as_the_stream_itself() {
        let bytes = stream();
        let mut passed = Vec::new();
        std::io::Read::read_to_end(&mut CheckedIpcStream::new(&bytes[..]), &mut passed).unwrap();
        assert_eq!(passed, bytes);
        let reader = arrow::ipc::reader::StreamReader::try_new(CheckedIpcStream::new(&bytes[..]), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2000);
    }

    #[test]
    fn a_declared_body_past_the_bound_is_refused_before_any_allocation() {
        let bytes = stream();
        // The schema message, then the first batch: find its metadata and raise its body length.
        let schema_len = i32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let batch_at = 8 + schema_len;
        let meta_len = i32::from_le_bytes(bytes[batch_at + 4..batch_at + 8].try_into().unwrap()) as usize;
        let meta = &bytes[batch_at + 8..batch_at + 8 + meta_len];
        let body = arrow::ipc::root_as_message(meta).unwrap().bodyLength();
        let needle = body.to_le_bytes();
        let found = meta.windows(8).position(|w| w == needle).expect("the body length in the metadata");
        let mut hostile = bytes.clone();
        hostile[batch_at + 8 + found..batch_at + 16 + found].copy_from_slice(&(1i64 << 40).to_le_bytes());
        let mut sink = Vec::new();
        let e = std::io::Read::read_to_end(&mut CheckedIpcStream::new(&hostile[..]), &mut sink).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("1099511627776"), "{e}");
    }
}
