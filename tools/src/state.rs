//! The device's durable client state: the last inbox sequence it has received without a gap,
//! and the rung of the transport ladder that worked last. Saved atomically (write to a temporary file, then rename), so a crash leaves the old or the
//! new position, never a torn one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Position of one device in its user's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Every inbox entry up to this sequence has been received.
    pub inbox_seq: u64,
    /// The URL of the rung that connected last ([`crate::Rung`]'s `Display`), tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung: Option<String>,
}

impl DeviceState {
    /// Loads the state; a missing file is a fresh device (position 0).
    pub fn load(path: &Path) -> std::io::Result<DeviceState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeviceState::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        let json = serde_json::to_vec(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("tern-state-{}", std::process::id()));
        let path = dir.join("dev.json");
        assert_eq!(DeviceState::load(&path).unwrap().inbox_seq, 0);
        DeviceState {
            inbox_seq: 42,
            rung: None,
        }
        .save(&path)
        .unwrap();
        assert_eq!(DeviceState::load(&path).unwrap().inbox_seq, 42);
        // Files written before the rung was kept still load.
        std::fs::write(&path, r#"{"inbox_seq":7}"#).unwrap();
        assert_eq!(DeviceState::load(&path).unwrap().rung, None);
        let with_rung = DeviceState {
            inbox_seq: 7,
            rung: Some("tls://h:443".into()),
        };
        with_rung.save(&path).unwrap();
        assert_eq!(DeviceState::load(&path).unwrap(), with_rung);
        let _ = std::fs::remove_dir_all(dir);
    }
}
