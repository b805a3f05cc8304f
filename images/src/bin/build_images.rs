#![forbid(unsafe_code)]

//! `build-images`: writes ambient-rs's OCI images into one image layout and prints each
//! image's reference and sizes. See `images/build.sh` for the release build.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "build-images",
    about = "Build ambient-rs OCI image layouts (no Docker)"
)]
struct Args {
    /// The directory holding the built programs (e.g. target/release).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The OCI image layout to write (images are tagged `<name>:<tag>` in it).
    #[arg(long)]
    out: PathBuf,
    /// Image tag.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Drop debug information from the programs.
    #[arg(long)]
    strip: bool,
    /// Only these images (default: all).
    images: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = ambient_images::BuildOptions {
        bin_dir: args.bin_dir,
        out: args.out,
        tag: args.tag,
        strip: args.strip,
    };
    let chosen: Vec<&ambient_images::ImageSpec> = if args.images.is_empty() {
        ambient_images::IMAGES.iter().collect()
    } else {
        let mut out = Vec::new();
        for name in &args.images {
            match ambient_images::spec(name) {
                Some(s) => out.push(s),
                None => bail!(
                    "unknown image {name:?}; images: {}",
                    ambient_images::IMAGES
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        out
    };
    println!(
        "{:<22} {:>12} {:>12}  files",
        "image", "compressed", "unpacked"
    );
    for spec in chosen {
        let built = ambient_images::build(spec, &options)
            .with_context(|| format!("building {}", spec.name))?;
        println!(
            "{:<22} {:>9.1} MB {:>9.1} MB  {}",
            built.reference,
            built.compressed as f64 / 1e6,
            built.unpacked as f64 / 1e6,
            built.files.join(" ")
        );
    }
    println!("layout: {}", options.out.display());
    Ok(())
}
