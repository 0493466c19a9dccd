//! One JSON Lines trace line, read through `TraceReader` in three places: as the header, as
//! the first event after a header, and as an event after the build (where updates are
//! checked against the layout).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit_fuzz::read_trace;

const HEADER: &str = r#"{"layout": {"address_spaces": [{"cell": "u8", "num_cells": 64}, {"cell": "u16", "num_cells": 0}, {"cell": "field", "num_cells": 32}], "address_height": 4}, "omitted_levels": 1}"#;
const WRITE: &str = r#"{"write": {"slot": 0, "offset": 8, "hex": "0102030405060708"}}"#;
const BUILD: &str = r#"{"build": {}}"#;

fuzz_target!(|line: &[u8]| {
    let with = |before: &[&str]| {
        let mut input: Vec<u8> = before
            .iter()
            .flat_map(|l| [l.as_bytes(), b"\n"].concat())
            .collect();
        input.extend_from_slice(line);
        input
    };
    read_trace(line.to_vec(), false);
    read_trace(with(&[HEADER]), false);
    read_trace(with(&[HEADER, WRITE, BUILD]), false);
});
