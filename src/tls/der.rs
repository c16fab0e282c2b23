//! The one field of an X.509 certificate the proxy reads itself: when it
//! expires, for the log line of a (re)load. Walking the DER to it takes a few
//! lines; a full X.509 parser would be a dependency for one date.
//!
//! ```text
//! Certificate ::= SEQUENCE {
//!   tbsCertificate SEQUENCE {
//!     [0] version OPTIONAL, serialNumber INTEGER, signature SEQUENCE,
//!     issuer SEQUENCE, validity SEQUENCE { notBefore Time, notAfter Time }, … } … }
//! Time ::= UTCTime "YYMMDDHHMMSSZ" | GeneralizedTime "YYYYMMDDHHMMSSZ"
//! ```

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element at the start of `input`: its tag, its content, and what
/// follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's `notAfter`, as `YYYY-MM-DD HH:MM:SS UTC`; `None` when the
/// DER is not a certificate this walk understands.
pub(crate) fn not_after(der: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (_, _, validity) = element(validity)?;
    let (tag, time, _) = element(validity)?;
    let time = std::str::from_utf8(time).ok()?;
    let time = match tag {
        UTC_TIME if time.len() == 13 => {
            let year: u32 = time[..2].parse().ok()?;
            // RFC 5280: two-digit years 50–99 are 19xx.
            let century = if year >= 50 { "19" } else { "20" };
            format!("{century}{time}")
        }
        GENERALIZED_TIME if time.len() == 15 => time.to_owned(),
        _ => return None,
    };
    if !time.ends_with('Z') || !time[..14].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        &time[..4],
        &time[4..6],
        &time[6..8],
        &time[8..10],
        &time[10..12],
        &time[12..14]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_expiring(year: i32) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 11, 21);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_expiry_of_a_certificate() {
        // UTCTime before 2050, GeneralizedTime from 2050 on.
        assert_eq!(
            not_after(&certificate_expiring(2031)).as_deref(),
            Some("2031-11-21 00:00:00 UTC")
        );
        assert_eq!(
            not_after(&certificate_expiring(2051)).as_deref(),
            Some("2051-11-21 00:00:00 UTC")
        );
    }

    #[test]
    fn anything_else_is_none() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(b"\x30\x03\x02\x01\x01"), None);
        let der = certificate_expiring(2031);
        assert_eq!(not_after(&der[..der.len() / 2]), None);
    }
}
