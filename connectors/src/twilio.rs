//! Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1>` under the account's auth token, over the full
//! URL Twilio called followed by the POST parameters sorted by name, each as name then value. A
//! JSON body is not in the signed string: Twilio adds `bodySHA256=<hex SHA-256 of the body>` to
//! the URL instead, and that hash must match the raw body.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac};

use crate::form;
use crate::signature::SignedRequest;
use crate::signature::{KeyIndex, SignatureError, constant_time_eq, hmac_of, verify_hmac};

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
pub const BODY_HASH_PARAMETER: &str = "bodySHA256";

/// The 20-byte HMAC-SHA1 of an `X-Twilio-Signature` value.
pub fn parse_signature_header(header: &str) -> Result<Vec<u8>, SignatureError> {
    let tag = STANDARD.decode(header.trim()).map_err(|_| SignatureError::Malformed("the signature is not base64"))?;
    if tag.len() != 20 {
        return Err(SignatureError::Malformed("the signature is not 20 bytes"));
    }
    Ok(tag)
}

/// The string Twilio signs for a form POST: the URL, then each parameter's name and value, sorted.
pub fn signed_string(url: &str, parameters: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = parameters.iter().collect();
    sorted.sort();
    let mut data = url.to_string();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    data
}

/// Verifies against the URL as given and with the scheme's default port added or removed, as
/// Twilio's own libraries do (proxies disagree on whether `:443` is part of the URL).
pub fn verify(request: &SignedRequest<'_>, secrets: &[&[u8]]) -> Result<KeyIndex, SignatureError> {
    let header = request.headers.get(SIGNATURE_HEADER).ok_or(SignatureError::Missing)?;
    let tag = parse_signature_header(header)?;
    let body_hash = query_parameter(request.url, BODY_HASH_PARAMETER);
    let parameters = match body_hash {
        Some(_) => Vec::new(),
        None => form::parse(request.body),
    };
    let index = url_variants(request.url)
        .iter()
        .find_map(|url| {
            let data = signed_string(url, &parameters);
            verify_hmac(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secrets, &[data.as_bytes()], &tag)
        })
        .ok_or(SignatureError::Mismatch)?;
    if let Some(expected) = body_hash {
        let actual = hex::encode(digest::digest(&digest::SHA256, request.body));
        if !constant_time_eq(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
            return Err(SignatureError::Mismatch);
        }
    }
    Ok(index)
}

/// The header Twilio would send for a request to `url` with form `parameters`.
pub fn sign(secret: &[u8], url: &str, parameters: &[(String, String)]) -> String {
    let data = signed_string(url, parameters);
    STANDARD.encode(hmac_of(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret, &[data.as_bytes()]))
}

/// The (raw, undecoded) value of a query parameter of `url`.
fn query_parameter<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let query = url.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(n, _)| *n == name).map(|(_, v)| v))
}

/// `url`, and `url` with its scheme's default port toggled.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else { return variants };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // An IPv6 literal's colons are not a port separator.
    let port_separator = authority.rfind(':').filter(|i| !authority[*i..].contains(']'));
    let toggled = match port_separator {
        Some(i) if &authority[i + 1..] == default_port => authority[..i].to_string(),
        Some(_) => return variants,
        None => format!("{authority}:{default_port}"),
    };
    variants.push(format!("{scheme}://{toggled}{tail}"));
    variants
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Headers;

    fn request<'a>(headers: &'a Headers, url: &'a str, body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest { headers, body, url, now: 0, tolerance_seconds: 300 }
    }

    /// The example of Twilio's "Webhooks security" page (and its api-snippets):
    /// auth token `12345`, a voice request's parameters, and the documented signature.
    #[test]
    fn twilios_documented_form_example_verifies() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let body = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310&To=%2B18005551212";
        let signature = "GvWf1cFY/Q7PnoempGyD5oXAezc=";
        assert_eq!(sign(b"12345", url, &form::parse(body)), signature);
        let headers = Headers::from_pairs([(SIGNATURE_HEADER, signature)]);
        assert_eq!(verify(&request(&headers, url, body), &[b"12345"]), Ok(0));
        // Parameter order in the body does not matter; their values do.
        let reordered =
            b"To=%2B18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=%2B14158675310&Caller=%2B14158675310";
        assert_eq!(verify(&request(&headers, url, reordered), &[b"12345"]), Ok(0));
        let changed =
            b"CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=9999&From=%2B14158675310&To=%2B18005551212";
        assert_eq!(verify(&request(&headers, url, changed), &[b"12345"]), Err(SignatureError::Mismatch));
        // The default port may or may not be in the URL the proxy reports.
        assert_eq!(
            verify(&request(&headers, "https://mycompany.com:443/myapp.php?foo=1&bar=2", body), &[b"12345"]),
            Ok(0)
        );
        assert_eq!(
            verify(&request(&headers, "https://mycompany.com/other.php?foo=1&bar=2", body), &[b"12345"]),
            Err(SignatureError::Mismatch)
        );
    }

    /// The JSON case of Twilio's helper libraries' tests (auth token `12345`): the published
    /// `bodySHA256` of their body, in the URL that is signed; the body is checked against it.
    #[test]
    fn twilios_json_body_vector_verifies() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let body = br#"{"property": "value", "boolean": true}"#;
        assert_eq!(
            hex::encode(digest::digest(&digest::SHA256, body)),
            "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        let signature = sign(b"12345", url, &[]);
        assert_eq!(signature, "a9nBmqA0ju/hNViExpshrM61xv4=");
        let headers = Headers::from_pairs([(SIGNATURE_HEADER, signature.as_str())]);
        assert_eq!(verify(&request(&headers, url, body), &[b"12345"]), Ok(0));
        // The URL's hash is signed, the body is checked against it.
        let other_body = br#"{"property": "evil", "boolean": true}"#;
        assert_eq!(verify(&request(&headers, url, other_body), &[b"12345"]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_headers_are_refused_and_urls_get_their_port_variants() {
        for bad in ["", "@@@", "AAAA"] {
            assert!(matches!(parse_signature_header(bad), Err(SignatureError::Malformed(_))), "{bad}");
        }
        assert_eq!(url_variants("https://a.example/x"), ["https://a.example/x", "https://a.example:443/x"]);
        assert_eq!(url_variants("http://a.example:80?q"), ["http://a.example:80?q", "http://a.example?q"]);
        assert_eq!(url_variants("https://a.example:8443/x"), ["https://a.example:8443/x"]);
        assert_eq!(url_variants("https://[::1]/x"), ["https://[::1]/x", "https://[::1]:443/x"]);
        assert_eq!(url_variants("not a url"), ["not a url"]);
        assert_eq!(query_parameter("https://x/y?a=1&bodySHA256=ab#f", "bodySHA256"), Some("ab"));
    }
}
