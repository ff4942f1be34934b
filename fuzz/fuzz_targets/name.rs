//! Arbitrary UTF-8 through `Name::parse`.
//!
//! Properties:
//! - `parse` accepts exactly the strings a straightforward reference validator
//!   accepts (3 or 4 '/'-separated components, each 1..=128 bytes, no control
//!   characters, no '*' or '>' (refused until wildcard subscriptions exist));
//! - for accepted names, `parse(display(x)) == x`, the parts match the input,
//!   `Name::new` from those parts builds the same name, and the name survives
//!   the wire inside a frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use slim_wire::{Frame, Limits, MAX_COMPONENT_LEN, Name, Subscribe, decode, encode};

fn reference_valid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    (3..=4).contains(&parts.len())
        && parts.iter().all(|c| {
            !c.is_empty()
                && c.len() <= MAX_COMPONENT_LEN
                && !c.chars().any(|ch| ch.is_control() || ch == '*' || ch == '>')
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Name::parse(s);
    assert_eq!(parsed.is_ok(), reference_valid(s), "{s:?}: {parsed:?}");
    let Ok(name) = parsed else {
        return;
    };

    let shown = name.to_string();
    assert_eq!(shown, s);
    assert_eq!(Name::parse(&shown).as_ref(), Ok(&name));

    let parts: Vec<&str> = s.split('/').collect();
    assert_eq!(name.org(), parts[0]);
    assert_eq!(name.namespace(), parts[1]);
    assert_eq!(name.service(), parts[2]);
    assert_eq!(name.instance(), parts.get(3).copied());
    assert_eq!(name.service_str(), parts[..3].join("/"));
    let built = Name::new(parts[0], parts[1], parts[2], parts.get(3).copied());
    assert_eq!(built.as_ref(), Ok(&name));
    assert_eq!(name.without_instance().instance(), None);

    let frame = Frame::Subscribe(Subscribe { id: 1, name });
    let mut buf = BytesMut::new();
    encode(&frame, &Limits::default(), &mut buf).expect("encode");
    assert_eq!(decode(&mut buf, &Limits::default()), Ok(Some(frame)));
});
