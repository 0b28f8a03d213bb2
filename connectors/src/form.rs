//! `application/x-www-form-urlencoded` bodies, as Twilio and Slack send them.

/// The name/value pairs of a form body, in order, `+` and `%XX` decoded. Invalid escapes are
/// kept as they are; invalid UTF-8 is replaced (the signature is checked over the raw bytes or
/// over what the vendor's own libraries decode, which is the same for valid input).
pub fn parse(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut halves = pair.splitn(2, |b| *b == b'=');
            let name = decode(halves.next().unwrap_or_default());
            let value = decode(halves.next().unwrap_or_default());
            (name, value)
        })
        .collect()
}

/// Percent-decodes one form component (`+` is a space).
pub fn decode(component: &[u8]) -> String {
    let mut out = Vec::with_capacity(component.len());
    let mut i = 0;
    while i < component.len() {
        match component[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < component.len() => match (hex_value(component[i + 1]), hex_value(component[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// A form body as a JSON object of strings (a repeated name keeps its last value), so rules
/// and subscribers read form deliveries like JSON ones.
pub fn to_json(pairs: &[(String, String)]) -> serde_json::Value {
    let object = pairs.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_in_order() {
        let pairs = parse(b"To=%2B18005551212&Body=hello+world&empty=&flag&bad=%zz%4");
        assert_eq!(
            pairs,
            [
                ("To".to_string(), "+18005551212".to_string()),
                ("Body".into(), "hello world".into()),
                ("empty".into(), String::new()),
                ("flag".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
        assert!(parse(b"").is_empty());
        assert_eq!(decode(b"%"), "%");
        assert_eq!(decode(b"a%4"), "a%4");
        assert_eq!(decode(b"%41"), "A");
    }
}
