//! Snapshot encoding: the versioned bincode form of [`LeaseState`] and [`DecodeError`].

use super::LeaseState;

/// The snapshot encoding's version; bump it when [`LeaseState`]'s layout changes.
pub const STATE_FORMAT_VERSION: u8 = 3;

/// Format 2: the state without the members' incarnations (still read).
const STATE_FORMAT_V2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("snapshot format version {0} is not supported (this build reads version {STATE_FORMAT_VERSION})")]
    Version(u8),
    #[error("snapshot is empty")]
    Empty,
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

impl LeaseState {
    /// Recompute what is derived from the replicated fields (and not in the snapshot).
    pub(super) fn rebuild_derived(&mut self) {
        self.principal_leases.clear();
        for lease in self.leases.values() {
            if let Some(p) = &lease.principal {
                *self.principal_leases.entry(p.clone()).or_default() += 1;
            }
        }
    }

    /// Encode the whole state, versioned, as bincode bytes (byte-identical for equal states):
    /// the state, then the members' incarnations.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_FORMAT_VERSION];
        // Encoding plain owned data into a Vec cannot fail.
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding the state into memory cannot fail");
        out.extend_from_slice(&body);
        let tail = bincode::serde::encode_to_vec(&self.incarnations, bincode::config::standard())
            .expect("encoding the state into memory cannot fail");
        out.extend_from_slice(&tail);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != STATE_FORMAT_VERSION && version != STATE_FORMAT_V2 {
            return Err(DecodeError::Version(version));
        }
        let corrupt = |e: bincode::error::DecodeError| DecodeError::Corrupt(e.to_string());
        let (mut state, mut read) =
            bincode::serde::decode_from_slice::<Self, _>(body, bincode::config::standard())
                .map_err(corrupt)?;
        if version == STATE_FORMAT_VERSION {
            let (incarnations, tail) =
                bincode::serde::decode_from_slice(&body[read..], bincode::config::standard())
                    .map_err(corrupt)?;
            state.incarnations = incarnations;
            read += tail;
        }
        if read != body.len() {
            return Err(DecodeError::Corrupt(format!(
                "{} trailing bytes after the state",
                body.len() - read
            )));
        }
        state.rebuild_derived();
        Ok(state)
    }
}
