//! memcommit: a Poseidon2/BabyBear Merkle commitment to a zkVM's memory, kept on the CPU
//! (or a GPU) and served over gRPC. See `docs/design.md` Part 1 for the binding conventions; the
//! modules follow the data's path `layout + image → tree → root / openings → service`.

pub mod bench;
pub mod error;
pub mod hash;
pub mod image;
pub mod layout;
pub mod load;
pub mod malloc;
pub mod replay;
pub mod tree;

pub use error::{Error, Result};
pub mod service;
pub mod trace;
