//! Group lifecycle over SPIFFE-bound credentials.

use std::time::Duration;

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::UnixTime;
use slim_auth::{DevCa, Identity, SpiffeId};
use slim_mls::{
    CIPHERSUITE, Group, Incoming, MlsError, MlsIdentity, binding_message, encode_credential,
    verify_credential,
};

const TTL: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn svid(ca: &DevCa, s: &str) -> Identity {
    ca.issue(&id(s), TTL).unwrap()
}

fn mls(ca: &DevCa, s: &str) -> MlsIdentity {
    MlsIdentity::new(&svid(ca, s)).unwrap()
}

struct Three {
    ca: DevCa,
    m: Group,
    a: Group,
    b: Group,
    ia: MlsIdentity,
}

/// Moderator m creates the group and adds a and b in one commit.
fn three() -> Three {
    let ca = DevCa::generate("example.org").unwrap();
    let im = mls(&ca, "spiffe://example.org/mod");
    let ia = mls(&ca, "spiffe://example.org/a");
    let ib = mls(&ca, "spiffe://example.org/b");
    let mut m = Group::create(&im, b"channel-1").unwrap();
    let c = m
        .add_members(&[ia.key_package().unwrap(), ib.key_package().unwrap()])
        .unwrap();
    m.merge_pending_commit().unwrap();
    let welcome = c.welcome.expect("an add has a welcome");
    let a = Group::join(&ia, &welcome, &ca.bundles()).unwrap();
    let b = Group::join(&ib, &welcome, &ca.bundles()).unwrap();
    Three { ca, m, a, b, ia }
}

#[test]
fn create_add_and_exchange() {
    let Three {
        ca,
        mut m,
        mut a,
        mut b,
        ..
    } = three();
    assert_eq!(m.epoch(), 1);
    assert_eq!(a.epoch(), 1);
    assert_eq!(b.epoch(), 1);
    let want = vec![
        id("spiffe://example.org/mod"),
        id("spiffe://example.org/a"),
        id("spiffe://example.org/b"),
    ];
    assert_eq!(m.members(), want);
    assert_eq!(a.members(), want);
    assert_eq!(b.group_id(), b"channel-1");

    for round in 0..3 {
        let from_m = m.encrypt(format!("m{round}").as_bytes()).unwrap();
        let from_a = a.encrypt(format!("a{round}").as_bytes()).unwrap();
        let from_b = b.encrypt(format!("b{round}").as_bytes()).unwrap();

        let d = a.decrypt(&from_m).unwrap();
        assert_eq!(d.sender, id("spiffe://example.org/mod"));
        assert_eq!(d.plaintext, format!("m{round}").as_bytes());
        let d = b.decrypt(&from_m).unwrap();
        assert_eq!(d.sender, id("spiffe://example.org/mod"));

        let d = m.decrypt(&from_a).unwrap();
        assert_eq!(d.sender, id("spiffe://example.org/a"));
        assert_eq!(d.plaintext, format!("a{round}").as_bytes());
        assert_eq!(
            b.decrypt(&from_a).unwrap().sender,
            id("spiffe://example.org/a")
        );

        let d = m.decrypt(&from_b).unwrap();
        assert_eq!(d.sender, id("spiffe://example.org/b"));
        assert_eq!(d.plaintext, format!("b{round}").as_bytes());
        assert_eq!(
            a.decrypt(&from_b).unwrap().sender,
            id("spiffe://example.org/b")
        );
    }
    // The router only ever sees ciphertext: the plaintext is not in the bytes.
    let ct = m.encrypt(b"very secret payload").unwrap();
    assert!(!ct.windows(19).any(|w| w == b"very secret payload"));
    // A commit is not an application message and vice versa; neither call
    // consumes the message it refuses.
    let ic = mls(&ca, "spiffe://example.org/c");
    let add = m.add_members(&[ic.key_package().unwrap()]).unwrap();
    m.merge_pending_commit().unwrap();
    assert!(matches!(
        a.decrypt(&add.commit),
        Err(MlsError::UnexpectedMessage(_))
    ));
    let app = b.encrypt(b"x").unwrap();
    assert!(matches!(
        a.process_commit(&app),
        Err(MlsError::UnexpectedMessage(_))
    ));
    assert_eq!(a.process_commit(&add.commit).unwrap().added.len(), 1);
    assert_eq!(a.decrypt(&app).unwrap().plaintext, b"x");
    // A sender cannot decrypt its own message.
    assert!(matches!(m.decrypt(&ct), Err(MlsError::OwnMessage)));
    // Verified credentials are cached.
    assert!(a.verified_cache_len() >= 3);
}

#[test]
fn later_add_is_seen_by_existing_members() {
    let Three {
        ca,
        mut m,
        mut a,
        mut b,
        ..
    } = three();
    let ic = mls(&ca, "spiffe://example.org/c");
    let commit = m.add_members(&[ic.key_package().unwrap()]).unwrap();
    m.merge_pending_commit().unwrap();
    let info = a.process_commit(&commit.commit).unwrap();
    assert_eq!(info.added, vec![id("spiffe://example.org/c")]);
    assert_eq!(info.sender, id("spiffe://example.org/mod"));
    assert_eq!(info.epoch, 2);
    // The committer's path update is not a rebind.
    assert!(info.updated.is_empty(), "{:?}", info.updated);
    match b.process(&commit.commit).unwrap() {
        Incoming::Commit(i) => assert_eq!(i.added, vec![id("spiffe://example.org/c")]),
        other => panic!("expected a commit, got {other:?}"),
    }
    let mut c = Group::join(&ic, &commit.welcome.unwrap(), &ca.bundles()).unwrap();
    assert_eq!(c.members().len(), 4);
    let ct = c.encrypt(b"hi from c").unwrap();
    for g in [&mut m, &mut a, &mut b] {
        let d = g.decrypt(&ct).unwrap();
        assert_eq!(d.sender, id("spiffe://example.org/c"));
        assert_eq!(d.plaintext, b"hi from c");
    }
    // Adding someone already in the group is refused.
    let again = mls(&ca, "spiffe://example.org/a");
    assert!(matches!(
        m.add_members(&[again.key_package().unwrap()]),
        Err(MlsError::AlreadyMember(x)) if x == id("spiffe://example.org/a")
    ));
}

#[test]
fn removed_member_cannot_decrypt() {
    let Three {
        mut m,
        mut a,
        mut b,
        ..
    } = three();
    let commit = m.remove_members(&[id("spiffe://example.org/b")]).unwrap();
    assert!(commit.welcome.is_none());
    m.merge_pending_commit().unwrap();
    assert_eq!(m.members().len(), 2);
    let info = a.process_commit(&commit.commit).unwrap();
    assert_eq!(info.removed, vec![id("spiffe://example.org/b")]);
    assert!(!info.self_removed);

    let after = m.encrypt(b"after removal").unwrap();
    assert_eq!(a.decrypt(&after).unwrap().plaintext, b"after removal");
    // b has not processed its removal yet: the new epoch is out of reach.
    assert!(matches!(b.decrypt(&after), Err(MlsError::WrongEpoch)));
    // b processes its removal: the group is dead for it.
    let info = b.process_commit(&commit.commit).unwrap();
    assert!(info.self_removed);
    assert!(!b.is_active());
    let after2 = m.encrypt(b"after removal 2").unwrap();
    assert!(matches!(b.decrypt(&after2), Err(MlsError::Evicted)));
    assert!(matches!(b.encrypt(b"x"), Err(MlsError::Evicted)));
    // Removing someone not in the group is a typed error.
    assert!(matches!(
        m.remove_members(&[id("spiffe://example.org/nobody")]),
        Err(MlsError::UnknownMember(_))
    ));
}

#[test]
fn tampered_and_replayed_ciphertexts_are_rejected() {
    let Three { mut m, mut a, .. } = three();
    let ct = m.encrypt(b"once").unwrap();
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    assert!(
        matches!(a.decrypt(&bad), Err(MlsError::Tampered)),
        "{:?}",
        a.decrypt(&bad)
    );
    let mut bad2 = ct.clone();
    let mid = bad2.len() / 2 + 8;
    bad2[mid] ^= 0x80;
    assert!(a.decrypt(&bad2).is_err());
    // Truncated garbage is a typed decode error.
    assert!(matches!(a.decrypt(&ct[..10]), Err(MlsError::Malformed(_))));

    assert_eq!(a.decrypt(&ct).unwrap().plaintext, b"once");
    assert!(matches!(a.decrypt(&ct), Err(MlsError::Replay)));
    assert!(matches!(a.decrypt(&ct), Err(MlsError::Replay)));
    // The group still works after the failures.
    let next = m.encrypt(b"next").unwrap();
    assert_eq!(a.decrypt(&next).unwrap().plaintext, b"next");
}

/// A key package whose credential bytes are chosen by the attacker.
fn kp_with_credential(credential: Vec<u8>, signer: &SignatureKeyPair) -> Vec<u8> {
    let provider = OpenMlsRustCrypto::default();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(credential).into(),
        signature_key: signer.public().into(),
    };
    KeyPackage::builder()
        .build(CIPHERSUITE, &provider, signer, cwk)
        .unwrap()
        .key_package()
        .tls_serialize_detached()
        .unwrap()
}

fn sign_with_svid(svid: &Identity, msg: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, svid.key.secret_der(), &rng)
        .unwrap();
    k.sign(&rng, msg).unwrap().as_ref().to_vec()
}

fn rejected_for(r: Result<slim_mls::Commit, MlsError>, who: &str) -> MlsError {
    match r {
        Err(MlsError::CredentialRejected { member, reason }) => {
            assert_eq!(member, who);
            *reason
        }
        other => panic!("expected CredentialRejected for {who}, got {other:?}"),
    }
}

#[test]
fn forged_credentials_are_refused_at_add() {
    let Three { ca, mut m, .. } = three();
    let victim = svid(&ca, "spiffe://example.org/victim");
    let mallory = svid(&ca, "spiffe://example.org/mallory");
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();

    // 1. Victim's SVID chain, binding signed by mallory's SVID key.
    let sig = sign_with_svid(
        &mallory,
        &binding_message(victim.spiffe_id.as_str(), signer.public()),
    );
    let cred = encode_credential(victim.spiffe_id.as_str(), &victim.cert_chain, &sig).unwrap();
    let e = rejected_for(
        m.add_members(&[kp_with_credential(cred, &signer)]),
        "spiffe://example.org/victim",
    );
    assert!(matches!(e, MlsError::BadBinding), "{e:?}");

    // 2. Claimed SPIFFE ID differs from the SVID's.
    let claim = "spiffe://example.org/admin";
    let sig = sign_with_svid(&mallory, &binding_message(claim, signer.public()));
    let cred = encode_credential(claim, &mallory.cert_chain, &sig).unwrap();
    let e = rejected_for(m.add_members(&[kp_with_credential(cred, &signer)]), claim);
    assert!(matches!(e, MlsError::IdMismatch { .. }), "{e:?}");

    // 3. A genuine credential of the victim, replayed with another MLS key.
    let victim_mls = MlsIdentity::new(&victim).unwrap();
    let cred = victim_mls.credential_bytes().to_vec();
    let e = rejected_for(
        m.add_members(&[kp_with_credential(cred, &signer)]),
        "spiffe://example.org/victim",
    );
    assert!(matches!(e, MlsError::BadBinding), "{e:?}");

    // 4. Garbage credential bytes.
    let e = rejected_for(
        m.add_members(&[kp_with_credential(b"not a credential".to_vec(), &signer)]),
        "<undecodable credential>",
    );
    assert!(matches!(e, MlsError::MalformedCredential(_)), "{e:?}");

    // Nothing was staged: the group is unchanged and can still commit.
    assert_eq!(m.epoch(), 1);
    assert_eq!(m.members().len(), 3);
    let ok = mls(&ca, "spiffe://example.org/ok");
    m.add_members(&[ok.key_package().unwrap()]).unwrap();
    m.merge_pending_commit().unwrap();
    assert_eq!(m.members().len(), 4);
}

#[test]
fn member_from_another_ca_is_refused() {
    let Three { mut m, .. } = three();
    // Same trust domain name, different CA: the chain does not verify.
    let other = DevCa::generate("example.org").unwrap();
    let stranger = mls(&other, "spiffe://example.org/stranger");
    let e = rejected_for(
        m.add_members(&[stranger.key_package().unwrap()]),
        "spiffe://example.org/stranger",
    );
    assert!(matches!(e, MlsError::Svid(_)), "{e:?}");
    // A different trust domain with no bundle at all.
    let foreign = DevCa::generate("evil.example").unwrap();
    let f = mls(&foreign, "spiffe://evil.example/x");
    let e = rejected_for(
        m.add_members(&[f.key_package().unwrap()]),
        "spiffe://evil.example/x",
    );
    assert!(matches!(e, MlsError::Svid(_)), "{e:?}");
}

#[test]
fn join_verifies_the_ratchet_tree() {
    let ca = DevCa::generate("example.org").unwrap();
    let im = mls(&ca, "spiffe://example.org/mod");
    let ia = mls(&ca, "spiffe://example.org/a");
    let mut m = Group::create(&im, b"g").unwrap();
    let c = m.add_members(&[ia.key_package().unwrap()]).unwrap();
    // a trusts another CA only: the moderator's credential does not verify.
    let other = DevCa::generate("example.org").unwrap();
    let err = Group::join(&ia, c.welcome.as_ref().unwrap(), &other.bundles()).unwrap_err();
    assert!(
        matches!(&err, MlsError::CredentialRejected { member, .. } if member == "spiffe://example.org/mod"),
        "{err:?}"
    );
    // A commit is not a welcome.
    assert!(matches!(
        Group::join(&ia, &c.commit, &ca.bundles()),
        Err(MlsError::UnexpectedMessage(_))
    ));
    // The refused attempts did not burn a's key package: with the right
    // bundles the same Welcome still works.
    m.merge_pending_commit().unwrap();
    let mut a = Group::join(&ia, c.welcome.as_ref().unwrap(), &ca.bundles()).unwrap();
    let ct = m.encrypt(b"hello").unwrap();
    assert_eq!(a.decrypt(&ct).unwrap().plaintext, b"hello");
    // A Welcome is single-use: its key package is consumed by a successful join.
    assert!(matches!(
        Group::join(&ia, c.welcome.as_ref().unwrap(), &ca.bundles()),
        Err(MlsError::WelcomeNotForUs)
    ));
}

#[test]
fn rebind_after_svid_rotation() {
    let Three {
        ca,
        mut m,
        mut a,
        mut b,
        ia,
    } = three();
    let old_key = ia.signature_public_key().to_vec();
    let rotated = svid(&ca, "spiffe://example.org/a");
    let commit = a.rebind(&rotated).unwrap();
    a.merge_pending_commit().unwrap();
    for g in [&mut m, &mut b] {
        let info = g.process_commit(&commit.commit).unwrap();
        assert_eq!(info.updated, vec![id("spiffe://example.org/a")]);
        assert_eq!(info.sender, id("spiffe://example.org/a"));
    }
    assert_eq!(a.epoch(), 2);
    let ct = a.encrypt(b"rotated").unwrap();
    assert_eq!(m.decrypt(&ct).unwrap().sender, id("spiffe://example.org/a"));
    assert_eq!(b.decrypt(&ct).unwrap().plaintext, b"rotated");
    assert_eq!(old_key, ia.signature_public_key());
    assert_ne!(old_key, a.own_signature_public_key());
    // A rebind to another SPIFFE ID is refused.
    let other = svid(&ca, "spiffe://example.org/not-a");
    assert!(matches!(
        a.rebind(&other),
        Err(MlsError::IdentityChanged { .. })
    ));
}

#[test]
fn verify_credential_directly() {
    let ca = DevCa::generate("example.org").unwrap();
    let ia = mls(&ca, "spiffe://example.org/a");
    let got = verify_credential(
        ia.credential_bytes(),
        ia.signature_public_key(),
        &ca.bundles(),
        UnixTime::now(),
    )
    .unwrap();
    assert_eq!(got, id("spiffe://example.org/a"));
    let mut other_key = ia.signature_public_key().to_vec();
    other_key[0] ^= 1;
    assert!(matches!(
        verify_credential(
            ia.credential_bytes(),
            &other_key,
            &ca.bundles(),
            UnixTime::now()
        ),
        Err(MlsError::BadBinding)
    ));
    // After the SVID's notAfter the credential no longer verifies.
    let later = UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            + TTL
            + Duration::from_secs(120),
    );
    assert!(matches!(
        verify_credential(
            ia.credential_bytes(),
            ia.signature_public_key(),
            &ca.bundles(),
            later
        ),
        Err(MlsError::Svid(_))
    ));
}

#[test]
fn past_epoch_messages_and_reused_leaves() {
    let Three {
        ca,
        mut m,
        mut a,
        mut b,
        ..
    } = three();
    // Sent in epoch 1, delivered after the commit to epoch 2: still decrypts.
    let early_a = a.encrypt(b"sent before the commit").unwrap();
    let early_b = b.encrypt(b"b before removal").unwrap();
    let early_b2 = b.encrypt(b"b before removal 2").unwrap();
    let rm = m.remove_members(&[id("spiffe://example.org/b")]).unwrap();
    m.merge_pending_commit().unwrap();
    a.process_commit(&rm.commit).unwrap();
    let d = m.decrypt(&early_a).unwrap();
    assert_eq!(d.sender, id("spiffe://example.org/a"));
    // b's message from epoch 1 (verified credential, valid SVID) is still b's.
    assert_eq!(
        a.decrypt(&early_b).unwrap().sender,
        id("spiffe://example.org/b")
    );
    // b's leaf is reused by c: a late epoch-1 message of b is never
    // attributed to c. m verified b's credential at add, so it is in m's
    // cache and the message stays attributed to b.
    let ic = mls(&ca, "spiffe://example.org/c");
    let add = m.add_members(&[ic.key_package().unwrap()]).unwrap();
    m.merge_pending_commit().unwrap();
    a.process_commit(&add.commit).unwrap();
    assert_eq!(
        a.members(),
        vec![
            id("spiffe://example.org/mod"),
            id("spiffe://example.org/a"),
            id("spiffe://example.org/c"),
        ]
    );
    assert_eq!(
        m.decrypt(&early_b2).unwrap().sender,
        id("spiffe://example.org/b")
    );
    // With its cache cleared (bundle refresh) a cannot re-verify b's
    // credential against the leaf, which now holds c: refused, not given to c.
    a.set_bundles(ca.bundles());
    let r = a.decrypt(&early_b2);
    assert!(
        matches!(&r, Err(MlsError::CredentialRejected { member, reason })
            if member == "spiffe://example.org/b" && matches!(**reason, MlsError::StaleSender)),
        "{r:?}"
    );
}

#[test]
fn a_receiver_too_far_behind_gets_a_typed_error() {
    let Three { mut m, mut a, .. } = three();
    let mut last = Vec::new();
    for _ in 0..1100 {
        last = m.encrypt(b"x").unwrap();
    }
    assert!(matches!(a.decrypt(&last), Err(MlsError::TooFarAhead)));
}
