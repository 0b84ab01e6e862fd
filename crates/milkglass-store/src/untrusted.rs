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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_panic_is_an_error() {
        let answer: Result<(), _> = decode_untrusted(|| panic!("index out of bounds"));
        assert!(answer.unwrap_err().to_string().contains("malformed Arrow IPC"));
        assert_eq!(decode_untrusted(|| Ok(7)).unwrap(), 7);
    }
}
