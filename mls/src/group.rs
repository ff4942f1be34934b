//! MLS identities (SVID-bound signature keys) and groups (one per channel).

mod codec;
mod commit;
mod identity;
mod message;
mod state;
mod types;

pub use identity::{MlsIdentity, key_package_claimed_id};
pub use state::Group;
pub use types::{CIPHERSUITE, Commit, CommitInfo, Decrypted, Incoming, MAX_PAST_EPOCHS};
