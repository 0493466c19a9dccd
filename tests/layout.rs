//! Layout JSON parsing, defaults and every validation error.

use memcommit::layout::{CellType, MemoryLayout};

fn err(json: &str) -> String {
    MemoryLayout::from_json(json)
        .expect_err("invalid")
        .to_string()
}

#[test]
fn defaults_and_round_trip() {
    let l = MemoryLayout::from_json(
        r#"{"address_spaces": [{"cell": "u16", "num_cells": 128}, {"cell": "u8", "num_cells": 16777216}, {"cell": "field", "num_cells": 0}]}"#,
    )
    .expect("valid");
    assert_eq!(l.address_height(), 21);
    assert_eq!(l.address_space_height(), 2);
    assert_eq!(l.address_spaces()[1].cell, CellType::U8);
    assert_eq!(l.raw_bytes(), 256 + 16777216);
    let json = serde_json::to_string(&l).expect("serialise");
    assert_eq!(
        json,
        r#"{"address_spaces":[{"cell":"u16","num_cells":128},{"cell":"u8","num_cells":16777216},{"cell":"field","num_cells":0}],"address_space_height":2,"address_height":21}"#
    );
    assert_eq!(MemoryLayout::from_json(&json).expect("re-parse"), l);
}

#[test]
fn explicit_heights_are_kept() {
    let l = MemoryLayout::from_json(
        r#"{"address_spaces": [{"cell": "u8", "num_cells": 8}], "address_space_height": 3, "address_height": 21}"#,
    )
    .expect("valid");
    assert_eq!((l.address_space_height(), l.address_height()), (3, 21));
}

#[test]
fn validation_errors_name_the_field_and_value() {
    assert_eq!(
        err(r#"{"address_spaces": [{"cell": "u8", "num_cells": 12}]}"#),
        "invalid address_spaces[0].num_cells: 12 is not 0 or a power of two >= 8"
    );
    assert_eq!(
        err(
            r#"{"address_spaces": [{"cell": "u8", "num_cells": 8}, {"cell": "u8", "num_cells": 4}]}"#
        ),
        "invalid address_spaces[1].num_cells: 4 is not 0 or a power of two >= 8"
    );
    assert!(
        err(r#"{"address_spaces": [{"cell": "u32", "num_cells": 8}]}"#)
            .contains("unknown variant `u32`, expected one of `u8`, `u16`, `field`")
    );
    assert!(err(r#"{"address_spaces": [], "colour": 1}"#).contains("unknown field `colour`"));
    assert!(
        err(r#"{"address_spaces": [{"cell": "u8", "num_cells": 8, "x": 0}]}"#)
            .contains("unknown field `x`")
    );
    assert_eq!(
        err(r#"{"address_spaces": [{"cell": "u8", "num_cells": 1024}], "address_height": 6}"#),
        "invalid address_height: 6 is too small: address_spaces[0] has 1024 cells and needs 7"
    );
    assert_eq!(
        err(
            r#"{"address_spaces": [{"cell": "u8", "num_cells": 8}, {"cell": "u8", "num_cells": 8}, {"cell": "u8", "num_cells": 8}], "address_space_height": 1}"#
        ),
        "invalid address_space_height: 1 is too small for 3 address spaces (needs 2)"
    );
    assert_eq!(
        err(r#"{"address_spaces": []}"#),
        "invalid address_spaces: empty: a layout needs at least one address space"
    );
    assert_eq!(
        err(r#"{"address_spaces": [{"cell": "u8", "num_cells": 8}], "address_height": 33}"#),
        "invalid address_height: 33 exceeds the maximum 32"
    );
    assert_eq!(
        err(r#"{"address_spaces": [{"cell": "u8", "num_cells": 68719476736}]}"#),
        "invalid address_spaces[0].num_cells: 68719476736 cells need 33 levels, more than the maximum 32"
    );
}

#[test]
fn field_cells_at_or_above_p_are_rejected_on_write() {
    let l = MemoryLayout::from_json(r#"{"address_spaces": [{"cell": "field", "num_cells": 8}]}"#)
        .expect("valid");
    let mut image = memcommit::image::MemoryImage::zeroed(&l).expect("image");
    let mut bytes = [0u8; 8];
    bytes[4..].copy_from_slice(&2013265921u32.to_le_bytes());
    assert_eq!(
        image.write(0, 0, &bytes).expect_err("p").to_string(),
        "invalid data (cell at byte 4): 2013265921 is not a canonical BabyBear element (>= 2013265921)"
    );
    // Nothing was written: the check is whole before the copy.
    assert_eq!(image.block_cells(0, 0), [0; 8]);
    bytes[4..].copy_from_slice(&2013265920u32.to_le_bytes());
    image.write(0, 0, &bytes).expect("p - 1 fits");
    assert_eq!(image.block_cells(0, 0)[1], 2013265920);
    assert!(image
        .write(0, 2, &bytes)
        .expect_err("misaligned")
        .to_string()
        .contains("byte_offset: 2 is not a multiple"));
    assert!(image
        .write(0, 28, &bytes)
        .expect_err("past end")
        .to_string()
        .contains("runs past the end of slot 0 (32 bytes)"));
}
