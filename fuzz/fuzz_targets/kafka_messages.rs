//! Every message body of the Kafka contract: the request of each kind as dbproc decodes it, the
//! reply of each kind as the API decodes it, and the sealed mail request as the mailer decodes
//! and opens it.
//!
//! Input: one selector byte, then the record's payload. Nothing may panic, and whatever decodes
//! must survive encode∘decode unchanged (the producers encode with the same types).

#![no_main]

use broker_auth_contract::{
    Authenticate, CheckExistence, CreateUser, DirectoryRequest, DirectoryRpc, Envelope,
    MailSealKey, Reply, RequestKind, SealedMailRequest, UpdatePassword,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let kinds = RequestKind::ALL.len();
    let selector = usize::from(selector) % (2 * kinds + 1);
    if selector < kinds {
        request(RequestKind::ALL[selector], payload);
    } else if selector < 2 * kinds {
        reply(RequestKind::ALL[selector - kinds], payload);
    } else {
        mail(payload);
    }
});

/// The mailer's decoder, then opening the code: a sealed code that does not open (forged,
/// truncated, another recipient) is an error, never a panic; one that opens seals and opens
/// again to the same mail.
fn mail(payload: &[u8]) {
    round_trips::<SealedMailRequest>(payload);
    let Ok(decoded) = Envelope::<SealedMailRequest>::from_json(payload) else {
        return;
    };
    let key = MailSealKey::from_secret(&[7u8; 32]).expect("a 32-byte secret");
    if let Ok(opened) = key.open(decoded.body) {
        let again = key.open(key.seal(opened.clone())).expect("a mail sealed here opens");
        assert_eq!(again, opened);
    }
}

/// dbproc's decoder, then the API's encoder for the same body type.
fn request(kind: RequestKind, payload: &[u8]) {
    let Ok(decoded) = DirectoryRequest::decode(kind, payload) else {
        return;
    };
    assert_eq!(decoded.body.kind(), kind);
    let id = decoded.request_id;
    let encoded = match &decoded.body {
        DirectoryRequest::ExistenceCheck(body) => Envelope::new(id, body).to_json(),
        DirectoryRequest::UserCreation(body) => Envelope::new(id, body).to_json(),
        DirectoryRequest::Authentication(body) => Envelope::new(id, body).to_json(),
        DirectoryRequest::PasswordUpdate(body) => Envelope::new(id, body).to_json(),
    };
    let again = DirectoryRequest::decode(kind, &encoded).expect("an encoded request decodes");
    assert_eq!(again, decoded);
}

/// The API's decoder of each reply kind (an exhaustive match: a new kind must be added here).
fn reply(kind: RequestKind, payload: &[u8]) {
    match kind {
        RequestKind::ExistenceCheck => {
            round_trips::<Reply<<CheckExistence as DirectoryRpc>::Response>>(payload)
        }
        RequestKind::UserCreation => {
            round_trips::<Reply<<CreateUser as DirectoryRpc>::Response>>(payload)
        }
        RequestKind::Authentication => {
            round_trips::<Reply<<Authenticate as DirectoryRpc>::Response>>(payload)
        }
        RequestKind::PasswordUpdate => {
            round_trips::<Reply<<UpdatePassword as DirectoryRpc>::Response>>(payload)
        }
    }
}

fn round_trips<T>(payload: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(decoded) = Envelope::<T>::from_json(payload) else {
        return;
    };
    let encoded = decoded.to_json();
    let again = Envelope::<T>::from_json(&encoded).expect("an encoded message decodes");
    assert_eq!(again, decoded);
}
