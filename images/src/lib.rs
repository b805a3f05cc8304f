//! The OCI images of ambient-rs, built without Docker: each image is one layer holding only
//! what its programs need (the binaries, the shared libraries their ELF headers ask for, and
//! an `/etc/passwd` naming the non-root user they run as), written as an OCI image layout
//! ([`layout`]) that skopeo, umoci and registries read.
//!
//! | image | programs |
//! |---|---|
//! | `ambient-controller` | `ambient-controller` |
//! | `ztunnel` | `ztunnel` |
//! | `node-agent` | `node-agent`, `ambient-cni` (the agent installs the plugin on the node) |
//! | `waypoint` | `waypoint` |
//!
//! There is no shell and no package manager in any of them.

#![forbid(unsafe_code)]

pub mod layout;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use layout::{Entry, ImageConfig};

/// The user every image runs as unless the pod says otherwise (distroless's `nonroot`).
pub const NONROOT: u32 = 65532;
/// Where the programs go.
pub const BIN_DIR: &str = "usr/local/bin";

/// One image: its name and the programs in it (the first is the entrypoint).
#[derive(Clone, Copy, Debug)]
pub struct ImageSpec {
    pub name: &'static str,
    pub programs: &'static [&'static str],
}

pub const IMAGES: &[ImageSpec] = &[
    ImageSpec {
        name: "ambient-controller",
        programs: &["ambient-controller"],
    },
    ImageSpec {
        name: "ztunnel",
        programs: &["ztunnel"],
    },
    ImageSpec {
        name: "node-agent",
        programs: &["node-agent", "ambient-cni"],
    },
    ImageSpec {
        name: "waypoint",
        programs: &["waypoint"],
    },
];

pub fn spec(name: &str) -> Option<&'static ImageSpec> {
    IMAGES.iter().find(|s| s.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tool(String),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Where the programs are (a cargo profile directory).
    pub bin_dir: PathBuf,
    /// The layout directory to write (one layout holds every image, tagged `<name>:<tag>`).
    pub out: PathBuf,
    pub tag: String,
    /// Drop debug information from the programs (`strip --strip-debug`).
    pub strip: bool,
}

/// What one build wrote.
#[derive(Clone, Debug)]
pub struct Built {
    pub name: &'static str,
    pub reference: String,
    /// Compressed layer size (what a node pulls).
    pub compressed: u64,
    /// Bytes of the files in it.
    pub unpacked: u64,
    pub files: Vec<String>,
}

/// Builds `spec` into the layout.
pub fn build(spec: &ImageSpec, options: &BuildOptions) -> Result<Built, ImageError> {
    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    let mut libraries = BTreeSet::new();
    for program in spec.programs {
        let source = options.bin_dir.join(program);
        let data = if options.strip {
            stripped(&source)?
        } else {
            std::fs::read(&source).map_err(io(&source))?
        };
        files.push((format!("{BIN_DIR}/{program}"), 0o755, data));
        libraries.extend(shared_libraries(&source)?);
    }
    for library in &libraries {
        // The file a link points at, under the link's name (the loader opens the name).
        let data = std::fs::read(library).map_err(io(library))?;
        let path = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        files.push((path, 0o755, data));
    }
    files.push((
        "etc/passwd".into(),
        0o644,
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n")
            .into_bytes(),
    ));
    files.push((
        "etc/group".into(),
        0o644,
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n").into_bytes(),
    ));
    let unpacked = files.iter().map(|(_, _, d)| d.len() as u64).sum();
    let mut dirs = BTreeSet::new();
    for (path, _, _) in &files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    let mut entries: Vec<Entry> = dirs
        .into_iter()
        .map(|path| Entry::Dir { path, mode: 0o755 })
        .collect();
    entries.push(Entry::Dir {
        path: "tmp".into(),
        mode: 0o1777,
    });
    entries.push(Entry::Dir {
        path: "home/nonroot".into(),
        mode: 0o755,
    });
    let names: Vec<String> = files.iter().map(|(p, _, _)| format!("/{p}")).collect();
    entries.extend(
        files
            .into_iter()
            .map(|(path, mode, data)| Entry::File { path, mode, data }),
    );
    let config = ImageConfig {
        entrypoint: vec![format!("/{BIN_DIR}/{}", spec.programs[0])],
        user: format!("{NONROOT}:{NONROOT}"),
        env: vec![format!("PATH=/{BIN_DIR}")],
        labels: vec![
            (
                "org.opencontainers.image.title".into(),
                format!("ambient-rs {}", spec.name),
            ),
            (
                "org.opencontainers.image.version".into(),
                options.tag.clone(),
            ),
        ],
    };
    let reference = format!("{}:{}", spec.name, options.tag);
    let manifest = layout::write_image(&options.out, &reference, &entries, &config)?;
    let compressed = layer_size(&options.out, &manifest)?;
    Ok(Built {
        name: spec.name,
        reference,
        compressed,
        unpacked,
        files: names,
    })
}

fn layer_size(out: &Path, manifest: &layout::Descriptor) -> Result<u64, ImageError> {
    let path = out
        .join("blobs/sha256")
        .join(manifest.digest.trim_start_matches("sha256:"));
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Tool(e.to_string()))?;
    Ok(manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["size"].as_u64())
        .sum())
}

/// The program's bytes without debug sections.
fn stripped(source: &Path) -> Result<Vec<u8>, ImageError> {
    let out = std::env::temp_dir().join(format!(
        "ambient-image-{}-{}",
        std::process::id(),
        source.file_name().unwrap_or_default().to_string_lossy()
    ));
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .map_err(|e| ImageError::Tool(format!("running strip (binutils): {e}")))?;
    if !status.success() {
        return Err(ImageError::Tool(format!(
            "strip {} failed ({status})",
            source.display()
        )));
    }
    let data = std::fs::read(&out).map_err(io(&out))?;
    let _ = std::fs::remove_file(&out);
    Ok(data)
}

/// The shared libraries the dynamic loader maps for `program` (and the loader itself), as
/// `ldd` resolves them on this machine.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| ImageError::Tool(format!("running ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static program: nothing to add.
        if text.contains("not a dynamic executable") || out.stderr.is_empty() {
            return Ok(Vec::new());
        }
        return Err(ImageError::Tool(format!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, ImageError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            return Err(ImageError::Tool(format!("missing library: {line}")));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader's
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            out.push(PathBuf::from(p));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_files_the_loader_maps() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5a5f0000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1c000000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0c1bf21000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1bd40000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1c9d5000)
";
        let got = parse_ldd(text).unwrap();
        assert_eq!(
            got,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let missing = parse_ldd("\tlibfoo.so => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libfoo"), "{missing}");
    }

    #[test]
    fn an_image_holds_the_program_its_libraries_and_the_user_only() {
        // This test's own executable stands in for a program.
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(&exe, bin.join("ztunnel")).unwrap();
        let options = BuildOptions {
            bin_dir: bin,
            out: dir.path().join("oci"),
            tag: "test".into(),
            strip: false,
        };
        let built = build(spec("ztunnel").unwrap(), &options).unwrap();
        assert_eq!(built.reference, "ztunnel:test");
        assert!(built.files.contains(&"/usr/local/bin/ztunnel".to_string()));
        assert!(built.files.iter().any(|f| f.contains("libc.so")));
        assert!(built.files.iter().all(|f| !f.contains("/bin/sh")));
        assert!(built.compressed > 0 && built.compressed < built.unpacked);
    }
}
