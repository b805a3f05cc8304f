// The link settings every proxy executable shares.
include!("../build-support/proxy_link.rs");
