#![no_main]
// arrow-ipc panics on some malformed streams, and milkglass catches those panics and refuses the
// body (`milkglass_store::decode_untrusted`). libFuzzer's panic hook would abort on them before
// they are caught, so the target puts Rust's default hook back: a caught panic is then an
// answer, and one that escapes still ends the run through libfuzzer-sys's own catch.
libfuzzer_sys::fuzz_target!(
    init: {
        drop(std::panic::take_hook());
    },
    |data: &[u8]| milkglass_fuzz::upload_arrow(data)
);
