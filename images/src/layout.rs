//! Writing an OCI image layout (image-spec v1.1): `oci-layout`, `index.json` and
//! content-addressed blobs (one gzip layer, the image config, the manifest). Reproducible: a
//! layer's files are sorted, owned by root, dated at the epoch, and gzip carries no time, so
//! the same inputs give the same digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } => path,
        }
    }
}

/// What goes in the image config besides its layer.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub user: String,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
}

/// A blob as the layout stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

pub fn sha256(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The uncompressed layer archive: entries sorted by path, every parent directory first.
pub fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>, std::io::Error> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in sorted {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            Entry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File { path, mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
        }
    }
    builder.into_inner()
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    // No file name, time 0: the same layer always compresses to the same bytes.
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

/// Writes an image layout at `dir` (created or added to) holding one image tagged `tag`;
/// returns the manifest's descriptor.
pub fn write_image(
    dir: &Path,
    tag: &str,
    entries: &[Entry],
    config: &ImageConfig,
) -> Result<Descriptor, LayoutError> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let tar = layer_tar(entries).map_err(io(dir))?;
    let diff_id = sha256(&tar);
    let layer = gzip(&tar).map_err(io(dir))?;
    let layer = put_blob(&blobs, LAYER_TYPE, &layer)?;
    let labels: serde_json::Map<String, Value> = config
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let image_config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": config.user,
            "Entrypoint": config.entrypoint,
            "Env": config.env,
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "ambient-rs build-images"}],
    });
    let config_blob = put_blob(
        &blobs,
        CONFIG_TYPE,
        &serde_json::to_vec(&image_config).expect("serializable"),
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_blob.to_json(),
        "layers": [layer.to_json()],
    });
    let manifest = put_blob(
        &blobs,
        MANIFEST_TYPE,
        &serde_json::to_vec(&manifest).expect("serializable"),
    )?;
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&layout))?;
    // index.json: this tag replaces an older image of the same tag, others stay.
    let index_path = dir.join("index.json");
    let mut manifests: Vec<Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default();
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    let mut entry = manifest.to_json();
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    manifests.push(entry);
    let index = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests});
    std::fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("serializable"),
    )
    .map_err(io(&index_path))?;
    Ok(manifest)
}

fn put_blob(
    blobs: &Path,
    media_type: &'static str,
    data: &[u8],
) -> Result<Descriptor, LayoutError> {
    let digest = sha256(data);
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    if !path.exists() {
        std::fs::write(&path, data).map_err(io(&path))?;
    }
    Ok(Descriptor {
        media_type,
        digest,
        size: data.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<Entry>, ImageConfig) {
        let entries = vec![
            Entry::File {
                path: "usr/local/bin/tool".into(),
                mode: 0o755,
                data: b"#!binary".to_vec(),
            },
            Entry::Dir {
                path: "usr".into(),
                mode: 0o755,
            },
            Entry::Dir {
                path: "usr/local".into(),
                mode: 0o755,
            },
            Entry::Dir {
                path: "usr/local/bin".into(),
                mode: 0o755,
            },
        ];
        let config = ImageConfig {
            entrypoint: vec!["/usr/local/bin/tool".into()],
            user: "65532:65532".into(),
            env: vec!["PATH=/usr/local/bin".into()],
            labels: vec![],
        };
        (entries, config)
    }

    #[test]
    fn the_same_inputs_give_the_same_digests_and_blobs_match_them() {
        let (entries, config) = sample();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let one = write_image(a.path(), "v1", &entries, &config).unwrap();
        let two = write_image(b.path(), "v1", &entries, &config).unwrap();
        assert_eq!(one, two);
        for blob in std::fs::read_dir(a.path().join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            let data = std::fs::read(blob.path()).unwrap();
            assert_eq!(
                sha256(&data),
                format!("sha256:{}", blob.file_name().to_str().unwrap())
            );
        }
        // A second tag in the same layout keeps the first.
        write_image(a.path(), "v2", &entries, &config).unwrap();
        let index: Value =
            serde_json::from_slice(&std::fs::read(a.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn layer_entries_come_sorted_and_owned_by_root() {
        let (entries, _) = sample();
        let tar = layer_tar(&entries).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<(String, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().uid().unwrap(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect();
        let paths: Vec<&str> = names.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/tool"]
        );
        assert!(names.iter().all(|(_, uid, mtime)| *uid == 0 && *mtime == 0));
    }
}
