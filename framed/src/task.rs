//! Task plumbing shared by the node and the SDK.

/// The message of a caught panic (`catch_unwind`, a `JoinError`'s
/// `into_panic`): the `&str` or `String` it was raised with, or `None` for
/// any other payload (each caller words that case for its own log line).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_and_string_payloads_give_their_text_others_none() {
        let p = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*p), Some("plain"));
        let p = std::panic::catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*p), Some("formatted 7"));
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u32)).unwrap_err();
        assert_eq!(panic_message(&*p), None);
    }
}
