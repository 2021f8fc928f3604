//! Layered configuration with the `config` crate: the typed defaults, then an optional
//! file, then environment variables `PREFIX_SECTION__KEY` (one prefix, `__` for nesting).
//! The environment is passed in, so tests control it instead of the process globals.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;

/// Typed settings that can list every problem they have at once.
pub trait Validate {
    /// Every problem found, each naming the key and the value; empty when valid.
    fn problems(&self) -> Vec<String>;
}

/// Settings loadable by [`load`].
pub trait Layered: DeserializeOwned + Serialize + Default {
    /// The environment-variable prefix, e.g. `CONTROLLER`.
    const ENV_PREFIX: &'static str;
    /// Keys (dotted, lowercase) whose environment value is a comma-separated list.
    const LIST_KEYS: &'static [&'static str] = &[];
}

/// Loads `T` from its defaults, `file` and the variables in `env` starting with
/// `T::ENV_PREFIX` and `_`.
pub fn load<T: Layered>(file: Option<&Path>, env: &HashMap<String, String>) -> anyhow::Result<T> {
    let prefix = T::ENV_PREFIX;
    let defaults = config::Config::try_from(&T::default())?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        builder = builder.add_source(config::File::from(path));
    }
    let prefix_with_sep = format!("{}_", prefix.to_uppercase());
    let ours: HashMap<String, String> =
        env.iter().filter(|(k, _)| k.starts_with(&prefix_with_sep)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut environment = config::Environment::with_prefix(prefix)
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(ours));
    if !T::LIST_KEYS.is_empty() {
        environment = environment.list_separator(",");
        for key in T::LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
    }
    builder = builder.add_source(environment);
    let settings = builder
        .build()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?
        .try_deserialize::<T>()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(settings)
}

/// The process environment as a map, for `load`.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// Where the job-signing key ring comes from: `keyring` (e.g. from an environment variable
/// fed by a Kubernetes Secret) or `keyring_file` (a mounted Secret), never the command line.
/// The text is `key_id:base64secret` entries (see `jobs_core::signing`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyRingSettings {
    pub keyring: crate::Secret,
    pub keyring_file: Option<std::path::PathBuf>,
}

impl KeyRingSettings {
    /// The key ring's text (empty when none is configured); an error names the file.
    pub fn text(&self) -> Result<crate::Secret, String> {
        match &self.keyring_file {
            Some(path) => std::fs::read_to_string(path)
                .map(crate::Secret::new)
                .map_err(|e| format!("signing.keyring_file {}: {e}", path.display())),
            None => Ok(self.keyring.clone()),
        }
    }

    /// The key ring, read with [`KeyRingSettings::text`] and parsed with `parse` (e.g.
    /// `jobs_core::signing::KeyRing::parse`); an error names the setting.
    pub fn load<T, E: std::fmt::Display>(&self, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<T, String> {
        parse(self.text()?.expose()).map_err(|e| format!("signing.keyring: {e}"))
    }
}
