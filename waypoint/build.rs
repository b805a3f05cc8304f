// The link settings every proxy executable shares.
include!("../build-support/pack_relocs.rs");
