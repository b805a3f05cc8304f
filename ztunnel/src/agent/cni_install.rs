//! Placing our CNI plugin on a node, the part istio-cni's installer plays: the binary into
//! the host's CNI binary directory, a kubeconfig for the plugin beside the host's network
//! configuration, and our entry appended to the plugin chain of the configuration the
//! container runtime uses (the first file of the directory by name, as libcni picks it).
//!
//! Taken out again on uninstall, leaving the configuration as it was: the original bytes are
//! kept under `.ambient-cni/` in the configuration directory (libcni reads only the
//! directory's own files, never its subdirectories), and restored when the file is still what
//! we wrote. When another writer changed it since (the cluster's network plugin rewrites its
//! file), only our entry is taken out of theirs. A single-plugin `.conf` is turned into a
//! `.conflist` of the same stem (the `.conf` would otherwise still sort first), and put back.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use proxy_core::readiness::Readiness;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::CniRemoval;
use crate::cni_plugin::spec::DEFAULT_AGENT_SOCKET;

/// The readiness gate held until our entry is in the node's chain.
pub const READY_GATE: &str = "cni-plugin";
/// How often the configuration is looked at again (another writer may drop our entry).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Our plugin's `type` (and binary name).
pub const PLUGIN_TYPE: &str = "ambient-cni";
/// The kubeconfig the plugin reads when the agent is unreachable, in the configuration
/// directory (no CNI extension, so libcni never takes it for a network).
pub const KUBECONFIG_FILE: &str = "ambient-cni-kubeconfig";
/// Where the original configuration is kept while ours is in place.
const BACKUP_DIR: &str = ".ambient-cni";

#[derive(Debug, thiserror::Error)]
pub enum CniInstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a CNI network configuration: {reason}")]
    Config { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CniInstallError + '_ {
    move |source| CniInstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the plugin goes on the host, and what its entry says.
#[derive(Clone, Debug)]
pub struct CniInstall {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Our plugin binary as shipped (in the image, beside the agent).
    pub plugin_source: PathBuf,
    /// The agent's socket, as the plugin (on the host) reaches it.
    pub agent_socket: PathBuf,
    pub exclude_namespaces: Vec<String>,
}

/// What [`CniInstall::ensure`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// No network configuration yet (the cluster's network plugin has not written one).
    NoConfiguration,
    /// Our entry is in this file's chain.
    InPlace(PathBuf),
}

impl CniInstall {
    pub fn new(conf_dir: PathBuf, bin_dir: PathBuf, plugin_source: PathBuf) -> Self {
        CniInstall {
            conf_dir,
            bin_dir,
            plugin_source,
            agent_socket: DEFAULT_AGENT_SOCKET.into(),
            exclude_namespaces: vec!["kube-system".into()],
        }
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.conf_dir.join(KUBECONFIG_FILE)
    }

    fn backup_dir(&self) -> PathBuf {
        self.conf_dir.join(BACKUP_DIR)
    }

    /// Our entry in the chain.
    pub fn entry(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "agentSocket": self.agent_socket,
            "kubeconfig": self.kubeconfig_path(),
            "excludeNamespaces": self.exclude_namespaces,
        })
    }

    /// Copies the plugin binary into place (atomically: a runtime may be executing the old
    /// one) unless the same bytes are there already.
    pub fn install_binary(&self) -> Result<(), CniInstallError> {
        use std::os::unix::fs::PermissionsExt;
        let target = self.bin_dir.join(PLUGIN_TYPE);
        let bytes = std::fs::read(&self.plugin_source).map_err(io(&self.plugin_source))?;
        if std::fs::read(&target).is_ok_and(|b| b == bytes) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.bin_dir).map_err(io(&self.bin_dir))?;
        let tmp = self.bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))
    }

    /// Writes the plugin's kubeconfig (owner-only: it holds a token) when it changed.
    pub fn write_kubeconfig(&self, contents: &[u8]) -> Result<(), CniInstallError> {
        let path = self.kubeconfig_path();
        if std::fs::read(&path).is_ok_and(|b| b == contents) {
            return Ok(());
        }
        write_private(&path, contents).map_err(io(&path))
    }

    /// The configuration file a runtime would use: the first by name with a CNI extension.
    pub fn primary(&self) -> Result<Option<PathBuf>, CniInstallError> {
        let entries = match std::fs::read_dir(&self.conf_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&self.conf_dir)(e)),
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
            })
            .collect();
        files.sort();
        Ok(files.into_iter().next())
    }

    /// Puts our entry in the primary configuration's chain (again, if someone rewrote the
    /// file without it), keeping the original for [`CniInstall::remove`].
    pub fn ensure(&self) -> Result<Placement, CniInstallError> {
        let Some(file) = self.primary()? else {
            return Ok(Placement::NoConfiguration);
        };
        let bytes = std::fs::read(&file).map_err(io(&file))?;
        let config = parse(&file, &bytes)?;
        let is_list = config.get("plugins").is_some();
        if is_list && entry_of(&config) == Some(&self.entry()) {
            return Ok(Placement::InPlace(file));
        }
        // What the file is without us: the original to restore later. A file that still has
        // an entry of ours (an older agent's, with other settings) was written by us: the
        // original kept then stays.
        if entry_of(&config).is_none() {
            self.keep_original(&file, &bytes)?;
        }
        let (target, list) = if is_list {
            (file.clone(), config)
        } else {
            (file.with_extension("conflist"), to_list(config))
        };
        let written = with_entry(list, self.entry());
        let text = serde_json::to_vec_pretty(&written).expect("serializable");
        write_atomically(&target, &text).map_err(io(&target))?;
        let backup = self.backup_dir();
        std::fs::write(backup.join("written"), &text).map_err(io(&backup))?;
        if target != file {
            std::fs::remove_file(&file).map_err(io(&file))?;
        }
        Ok(Placement::InPlace(target))
    }

    fn keep_original(&self, file: &Path, bytes: &[u8]) -> Result<(), CniInstallError> {
        let backup = self.backup_dir();
        let _ = std::fs::remove_dir_all(&backup);
        std::fs::create_dir_all(&backup).map_err(io(&backup))?;
        let name = file.file_name().expect("a file name");
        std::fs::write(backup.join(name), bytes).map_err(io(&backup))
    }

    /// Takes our entry out, restoring the original file when nobody else changed it since,
    /// and removes the binary and the kubeconfig.
    pub fn remove(&self) -> Result<(), CniInstallError> {
        let backup = self.backup_dir();
        let original = std::fs::read_dir(&backup)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n != "written"));
        let written = std::fs::read(backup.join("written")).ok();
        // Every configuration file carrying our entry.
        let entries = std::fs::read_dir(&self.conf_dir).map_err(io(&self.conf_dir))?;
        for path in entries.flatten().map(|e| e.path()).filter(|p| p.is_file()) {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if entry_of(&config).is_none() {
                continue;
            }
            match (&original, &written) {
                (Some(orig), Some(ours)) if *ours == bytes => {
                    let restored = self.conf_dir.join(orig.file_name().expect("a file name"));
                    let text = std::fs::read(orig).map_err(io(orig))?;
                    write_atomically(&restored, &text).map_err(io(&restored))?;
                    if restored != path {
                        std::fs::remove_file(&path).map_err(io(&path))?;
                    }
                }
                _ => {
                    let without = without_entry(config);
                    let text = serde_json::to_vec_pretty(&without).expect("serializable");
                    write_atomically(&path, &text).map_err(io(&path))?;
                }
            }
        }
        for path in [self.kubeconfig_path(), self.bin_dir.join(PLUGIN_TYPE)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        let _ = std::fs::remove_dir_all(&backup);
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value, CniInstallError> {
    let config: Value = serde_json::from_slice(bytes).map_err(|e| CniInstallError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = |reason: &str| CniInstallError::Config {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match config.get("plugins") {
        Some(Value::Array(_)) => Ok(config),
        Some(_) => Err(bad("\"plugins\" is not a list")),
        None if config.get("type").is_some_and(Value::is_string) => Ok(config),
        None => Err(bad("neither a plugin list nor a plugin")),
    }
}

/// Our entry in a list's chain, if there is one.
fn entry_of(config: &Value) -> Option<&Value> {
    config
        .get("plugins")?
        .as_array()?
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE))
}

/// A single-plugin configuration as a list of one: the list takes its version and name.
fn to_list(mut plugin: Value) -> Value {
    let object = plugin.as_object_mut().expect("checked by parse");
    let version = object.remove("cniVersion").unwrap_or(json!("1.0.0"));
    let name = object.remove("name").unwrap_or(json!("k8s-pod-network"));
    json!({"cniVersion": version, "name": name, "plugins": [plugin]})
}

fn with_entry(list: Value, entry: Value) -> Value {
    let mut list = without_entry(list);
    list["plugins"]
        .as_array_mut()
        .expect("checked by parse")
        .push(entry);
    list
}

fn without_entry(mut list: Value) -> Value {
    if let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    }
    list
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("ambient-cni-tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("ambient-cni-tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    std::fs::rename(tmp, path)
}

/// Where the plugin's kubeconfig comes from.
#[derive(Clone, Debug)]
pub enum KubeconfigSource {
    /// The agent's own kubeconfig file, copied.
    File(PathBuf),
    /// This pod's service account ([`in_cluster_kubeconfig`]); rewritten as its token rotates.
    InCluster,
}

impl KubeconfigSource {
    fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            KubeconfigSource::File(path) => std::fs::read(path),
            KubeconfigSource::InCluster => in_cluster_kubeconfig(),
        }
    }
}

/// Places the plugin and keeps it placed until `cancel`: binary, kubeconfig (token rotation
/// included) and our entry, looked at again every second. Marks readiness once in place.
pub async fn keep_in_place(
    install: CniInstall,
    kubeconfig: KubeconfigSource,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    let mut last: Option<Result<Placement, String>> = None;
    let binary = install.bin_dir.join(PLUGIN_TYPE);
    let mut copied = false;
    loop {
        let outcome = (|| -> Result<Placement, String> {
            // Copied once per start (an upgrade brings a new one), again if it disappears.
            if !copied || !binary.exists() {
                install.install_binary().map_err(|e| e.to_string())?;
                copied = true;
            }
            let config = kubeconfig
                .read()
                .map_err(|e| format!("the plugin's kubeconfig: {e}"))?;
            install
                .write_kubeconfig(&config)
                .map_err(|e| e.to_string())?;
            install.ensure().map_err(|e| e.to_string())
        })();
        if last.as_ref() != Some(&outcome) {
            match &outcome {
                Ok(Placement::InPlace(file)) => {
                    info!(file = %file.display(), "CNI plugin in the node's chain");
                    readiness.mark(READY_GATE);
                }
                Ok(Placement::NoConfiguration) => info!(
                    dir = %install.conf_dir.display(),
                    "no CNI network configuration yet; waiting for the cluster's network plugin"
                ),
                Err(e) => warn!(error = %e, "installing the CNI plugin"),
            }
            last = Some(outcome);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// What an exiting agent does with the plugin: see [`CniRemoval`].
pub async fn on_exit(
    install: &CniInstall,
    removal: CniRemoval,
    client: Option<&kube::Client>,
    daemonset: Option<&str>,
) {
    let remove = match removal {
        CniRemoval::Always => true,
        CniRemoval::Never => false,
        CniRemoval::WhenUninstalled => match (client, daemonset) {
            (Some(client), Some(name)) => uninstalled(client, name).await,
            _ => {
                info!("exiting without --daemonset and a pod source: the CNI plugin stays");
                false
            }
        },
    };
    if !remove {
        info!("CNI plugin left in place (restart or upgrade)");
        return;
    }
    match install.remove() {
        Ok(()) => {
            info!(dir = %install.conf_dir.display(), "CNI plugin removed; configuration restored")
        }
        Err(e) => warn!(error = %e, "removing the CNI plugin"),
    }
}

/// Whether DaemonSet `namespace/name` is gone or being deleted. An API server that cannot
/// be asked counts as not uninstalled: leaving the plugin is the safe mistake (pods in the
/// mesh wait for an agent; pods outside it still start).
async fn uninstalled(client: &kube::Client, name: &str) -> bool {
    let Some((namespace, name)) = name.split_once('/') else {
        warn!(
            daemonset = name,
            "--daemonset is not namespace/name; the CNI plugin stays"
        );
        return false;
    };
    let api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(None) => true,
        Ok(Some(ds)) => ds.metadata.deletion_timestamp.is_some(),
        // Our account or its rights already removed: only an uninstall does that.
        Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => {
            info!(
                code = status.code,
                "the API server no longer knows this agent's account"
            );
            true
        }
        Err(e) => {
            warn!(error = %e, "reading the DaemonSet; the CNI plugin stays");
            false
        }
    }
}

/// The plugin's kubeconfig from this pod's service account (in-cluster): the API server's
/// address from the environment Kubernetes sets, the token and CA from the mounted account.
pub fn in_cluster_kubeconfig() -> std::io::Result<Vec<u8>> {
    const ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let missing = |what: &str| std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string());
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| missing("KUBERNETES_SERVICE_HOST is not set"))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let token = std::fs::read_to_string(format!("{ACCOUNT}/token"))?;
    let ca = std::fs::read(format!("{ACCOUNT}/ca.crt"))?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": format!("https://{host}:{port}"),
            "certificate-authority-data": BASE64.encode(&ca)}}],
        "users": [{"name": "ambient-cni", "user": {"token": token.trim()}}],
        "contexts": [{"name": "ambient-cni", "context": {"cluster": "local", "user": "ambient-cni"}}],
        "current-context": "ambient-cni",
    });
    // JSON is YAML: kubeconfig readers take it as it is.
    Ok(serde_json::to_vec_pretty(&config).expect("serializable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, CniInstall) {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        for (name, text) in files {
            std::fs::write(conf.join(name), text).unwrap();
        }
        let plugin = dir.path().join("image-ambient-cni");
        std::fs::write(&plugin, b"\x7fELF plugin").unwrap();
        let install = CniInstall::new(conf, dir.path().join("bin"), plugin);
        (dir, install)
    }

    const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [ {"type": "flannel", "delegate": {"isDefaultGateway": true}}, {"type": "portmap", "capabilities": {"portMappings": true}} ]
}
"#;

    #[test]
    fn the_first_list_gets_our_entry_and_gets_its_bytes_back() {
        let (_dir, install) = setup(&[
            ("10-flannel.conflist", FLANNEL),
            ("99-other.conflist", r#"{"name":"x","plugins":[]}"#),
            ("README", "not a configuration"),
        ]);
        install.install_binary().unwrap();
        install.write_kubeconfig(b"kubeconfig").unwrap();
        let file = install.conf_dir.join("10-flannel.conflist");
        assert_eq!(install.ensure().unwrap(), Placement::InPlace(file.clone()));
        let config: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let types: Vec<&str> = config["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["flannel", "portmap", PLUGIN_TYPE]);
        assert_eq!(
            config["plugins"][2]["kubeconfig"],
            json!(install.kubeconfig_path())
        );
        // A second pass (an agent restart) changes nothing and keeps the original.
        let before = std::fs::read(&file).unwrap();
        install.ensure().unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), before);

        install.remove().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), FLANNEL);
        assert!(!install.kubeconfig_path().exists());
        assert!(!install.bin_dir.join(PLUGIN_TYPE).exists());
        assert!(!install.conf_dir.join(BACKUP_DIR).exists());
        assert!(install.conf_dir.join("README").exists());
    }

    #[test]
    fn a_rewritten_file_gets_the_entry_again_and_keeps_the_rewrite_on_removal() {
        let (_dir, install) = setup(&[("10-flannel.conflist", FLANNEL)]);
        let file = install.conf_dir.join("10-flannel.conflist");
        install.ensure().unwrap();
        // The network plugin rewrites its configuration, without us.
        let rewritten = FLANNEL.replace("cbr0", "cbr1");
        std::fs::write(&file, &rewritten).unwrap();
        install.ensure().unwrap();
        let config: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(config["name"], "cbr1");
        assert!(entry_of(&config).is_some());
        install.remove().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), rewritten);

        // Changed while ours is in it: only our entry leaves.
        install.ensure().unwrap();
        let mut config: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        config["plugins"][0]["delegate"]["mtu"] = json!(1400);
        std::fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
        install.remove().unwrap();
        let left: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(left["plugins"][0]["delegate"]["mtu"], 1400);
        assert!(entry_of(&left).is_none());
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list_and_comes_back() {
        let bridge = r#"{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"cni0"}"#;
        let (_dir, install) = setup(&[("10-bridge.conf", bridge)]);
        let list = install.conf_dir.join("10-bridge.conflist");
        assert_eq!(install.ensure().unwrap(), Placement::InPlace(list.clone()));
        assert!(!install.conf_dir.join("10-bridge.conf").exists());
        let config: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
        assert_eq!(config["cniVersion"], "0.4.0");
        assert_eq!(config["name"], "mynet");
        assert_eq!(
            config["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        install.remove().unwrap();
        assert!(!list.exists());
        assert_eq!(
            std::fs::read_to_string(install.conf_dir.join("10-bridge.conf")).unwrap(),
            bridge
        );
    }

    #[test]
    fn nothing_to_join_and_garbage_are_told_apart() {
        let (_dir, install) = setup(&[]);
        assert_eq!(install.ensure().unwrap(), Placement::NoConfiguration);
        std::fs::write(install.conf_dir.join("10-x.conflist"), "{not json").unwrap();
        let err = install.ensure().unwrap_err();
        assert!(err.to_string().contains("10-x.conflist"), "{err}");
        std::fs::write(install.conf_dir.join("10-x.conflist"), r#"{"plugins":3}"#).unwrap();
        let err = install.ensure().unwrap_err();
        assert!(err.to_string().contains("not a list"), "{err}");
    }
}
