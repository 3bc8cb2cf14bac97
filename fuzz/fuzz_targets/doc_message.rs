//! One y-protocols message from raw bytes, through the server's own checks
//! (`docs::check_and_apply`, which `DocHandle::accept` runs) and the JSON projection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triptrip_realtime::docs::{check_and_apply, plausible_message};
use triptrip_realtime::docs::content::to_json;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Any, Array, Doc, MapPrelim, ReadTxn, Text, Transact, WriteTxn};

/// The server's default `max_update_bytes`.
const LIMIT: usize = 1 << 20;

/// A small trip: a title and an itinerary of two stops, written by client 1.
fn trip() -> Doc {
    let doc = Doc::with_client_id(1);
    {
        let mut txn = doc.transact_mut();
        let title = txn.get_or_insert_text("title");
        title.insert(&mut txn, 0, "Lisbon in May");
        let itinerary = txn.get_or_insert_array("itinerary");
        for (day, place) in [(1, "Alfama"), (2, "Sintra")] {
            itinerary.push_back(
                &mut txn,
                MapPrelim::from([
                    ("day".to_owned(), Any::from(day as f64)),
                    ("place".to_owned(), Any::from(place)),
                ]),
            );
        }
    }
    doc
}

fuzz_target!(|data: &[u8]| {
    // As `gateway::yjs` `handle_frame` decodes a frame.
    if !plausible_message(data) {
        return;
    }
    let Ok(Ok(message)) = std::panic::catch_unwind(|| Message::decode_v1(data)) else {
        return;
    };
    let doc = trip();
    match message {
        Message::Sync(SyncMessage::SyncStep1(sv)) => {
            // What `DocHandle::diff` answers.
            let txn = doc.transact();
            let _ = (txn.encode_diff_v1(&sv), txn.state_vector());
        }
        Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
            let before = to_json(&doc);
            match check_and_apply(&doc, &update, LIMIT) {
                Ok(None) => assert_eq!(before, to_json(&doc), "no changes, yet the JSON moved"),
                Ok(Some(changes)) => {
                    let after = to_json(&doc);
                    // Peers receive `changes`: from the same start they must reach the same JSON.
                    let replica = trip();
                    match check_and_apply(&replica, &changes, usize::MAX) {
                        Ok(_) => assert_eq!(after, to_json(&replica), "relayed changes diverge"),
                        Err(e) => panic!("the server refused its own relayed changes: {e:?}"),
                    }
                }
                // Refused before applying: the document is untouched.
                Err((_, None)) => assert_eq!(before, to_json(&doc), "a refusal changed the doc"),
                // Refused after applying: the server discards this document and reloads.
                Err((_, Some(_))) => {
                    let _ = to_json(&doc);
                }
            }
        }
        Message::Awareness(_) | Message::AwarenessQuery | Message::Auth(_) | Message::Custom(..) => {}
    }
});
