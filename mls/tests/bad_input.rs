//! Bad input never panics and never succeeds: every single-byte corruption
//! and truncation of a ciphertext, commit, key package or welcome is a typed
//! error, and the genuine message still works afterwards.

use std::time::Duration;

use slim_auth::{DevCa, SpiffeId};
use slim_mls::{Group, MlsIdentity};

fn mls(ca: &DevCa, s: &str) -> MlsIdentity {
    let svid = ca
        .issue(&SpiffeId::parse(s).unwrap(), Duration::from_secs(3600))
        .unwrap();
    MlsIdentity::new(&svid).unwrap()
}

fn corruptions(bytes: &[u8], stride: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let flips = (0..bytes.len()).step_by(stride).map(move |i| {
        let mut b = bytes.to_vec();
        b[i] ^= 0x5a;
        b
    });
    let cuts = (0..bytes.len())
        .step_by(stride.max(bytes.len() / 16))
        .map(move |n| bytes[..n].to_vec());
    flips.chain(cuts)
}

#[test]
fn corrupted_messages_are_errors() {
    let ca = DevCa::generate("example.org").unwrap();
    let im = mls(&ca, "spiffe://example.org/mod");
    let ia = mls(&ca, "spiffe://example.org/a");
    let ib = mls(&ca, "spiffe://example.org/b");
    let mut m = Group::create(&im, b"g").unwrap();

    // Key packages.
    let kp_a = ia.key_package().unwrap();
    for bad in corruptions(&kp_a, 3) {
        assert!(m.add_members(&[bad]).is_err());
    }
    let c = m.add_members(&[kp_a]).unwrap();
    m.merge_pending_commit().unwrap();
    let welcome = c.welcome.unwrap();

    // Welcomes.
    for bad in corruptions(&welcome, 11) {
        assert!(Group::join(&ia, &bad, &ca.bundles()).is_err());
    }
    let mut a = Group::join(&ia, &welcome, &ca.bundles()).unwrap();

    // Application messages.
    let ct = m.encrypt(b"payload").unwrap();
    for bad in corruptions(&ct, 1) {
        assert!(a.decrypt(&bad).is_err());
    }
    assert_eq!(a.decrypt(&ct).unwrap().plaintext, b"payload");

    // Commits.
    let add_b = m.add_members(&[ib.key_package().unwrap()]).unwrap();
    m.merge_pending_commit().unwrap();
    for bad in corruptions(&add_b.commit, 5) {
        assert!(a.process_commit(&bad).is_err());
        assert_eq!(a.epoch(), 1);
    }
    let info = a.process_commit(&add_b.commit).unwrap();
    assert_eq!(info.epoch, 2);
    assert_eq!(a.members(), m.members());

    // Arbitrary garbage.
    for n in [0usize, 1, 2, 7, 64, 1000] {
        let junk: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
        assert!(a.decrypt(&junk).is_err());
        assert!(a.process_commit(&junk).is_err());
        assert!(Group::join(&ib, &junk, &ca.bundles()).is_err());
        assert!(m.add_members(&[junk]).is_err());
    }
}
