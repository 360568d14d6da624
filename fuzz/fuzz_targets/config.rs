//! Arbitrary bytes through the function `tollgate config check` (and
//! `tollgate run`) uses to read a config file: it must return an error,
//! never panic, whatever the bytes are.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = tollgate::config::Config::from_bytes(std::path::Path::new("fuzz.toml"), data) {
        // Formatting the message is part of what must not panic.
        let _ = e.to_string();
    }
});
