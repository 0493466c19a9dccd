//! Layout JSON: `MemoryLayout::from_json` and serde. A rejected layout must be
//! `InvalidArgument` naming a field; an accepted one must round-trip through JSON and the
//! protobuf form, and its sizes must be computable at every `omitted_levels` with a page at the end of every
//! slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::service::codec;
use memcommit::tree::{choose_omitted_levels, node_bytes, MAX_OMITTED_LEVELS};
use memcommit::Error;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let layout = match MemoryLayout::from_json(text) {
        Ok(l) => l,
        Err(Error::InvalidArgument { field, message }) => {
            assert!(!field.is_empty() && !message.is_empty());
            assert!(serde_json::from_str::<MemoryLayout>(text).is_err());
            return;
        }
        Err(other) => panic!("layout error of the wrong kind: {other:?}"),
    };
    let via_serde: MemoryLayout = serde_json::from_str(text).expect("serde agrees with from_json");
    assert_eq!(via_serde, layout);
    let json = serde_json::to_string(&layout).expect("a layout serialises");
    assert_eq!(MemoryLayout::from_json(&json).expect("round trip"), layout);
    let proto = codec::layout_to_proto(&layout);
    assert_eq!(
        codec::layout_from_proto(Some(&proto), "layout").expect("proto round trip"),
        layout
    );
    // An image with the last cell of every slot written: one page each, at the highest
    // page number, whatever the declared size.
    let mut image = MemoryImage::zeroed(&layout).expect("a zeroed image allocates nothing");
    for (slot, space) in layout.address_spaces().iter().enumerate() {
        let w = space.cell.bytes();
        if space.raw_bytes() > 0 {
            image
                .write(slot as u32, space.raw_bytes() - w as u64, &vec![0; w])
                .expect("the last cell");
        }
    }
    let raw = image.total_bytes();
    for k in 0..=MAX_OMITTED_LEVELS {
        let _ = node_bytes(&layout, &image, k).saturating_add(raw);
    }
    let _ = choose_omitted_levels(&layout, &image, 1 << 30);
    assert_eq!(
        layout.opening_len(),
        (layout.address_height() + layout.address_space_height()) as usize
    );
});
