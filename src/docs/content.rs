//! What a collaborative document says, as JSON: its projection, the difference between two
//! projections, and restoring a document to an earlier version as a new forward change.
//!
//! Pure functions, no I/O. Yjs updates do not carry the types of root-level shared types, so a
//! root's kind is read from its content, never from what this replica declared locally: every
//! replica that applied the same updates projects the same JSON. Nothing here panics on content
//! sent by clients; shared types nested deeper than [`MAX_DEPTH`] are cut off (projected and
//! restored as `null`) instead of being recursed into.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::Value;
use yrs::branch::{Branch, BranchPtr};
use yrs::types::text::Diff;
use yrs::types::{AsPrelim, Delta};
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, Doc, In, Map, MapPrelim, MapRef, Number, Options, Out,
    ReadTxn, Text, TextRef, Transact, TransactionMut, WriteTxn, XmlFragmentRef,
};

/// How deep shared types and JSON values are followed (a root's members are at depth 1).
pub const MAX_DEPTH: usize = 64;

/// The document's JSON projection: an object with one member per root type that has content,
/// members sorted by name.
///
/// A root holding characters is a string (Y.Text, and a root Y.XmlText, which content cannot
/// tell apart: its characters, without formatting; string embeds count as characters), a root
/// holding XML nodes only is the string of its XML (as Yjs' `toString()`, attributes sorted),
/// any other root holding elements is an array (Y.Array), and a root holding only keys is an
/// object (Y.Map). Empty and never-written roots are omitted.
/// Nested shared types are projected by their own type: Y.Text as a string, Y.Array as an array,
/// Y.Map as an object with sorted members, XML types as the string of their XML, a subdocument
/// as `{"guid": …}`. Binary values are base64 strings, integral numbers are integers.
///
/// Blocks until no write transaction is open on `doc`. Time and memory are linear in the size
/// of the document.
pub fn to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let roots: BTreeMap<String, Value> = txn
        .root_refs()
        .filter_map(|(name, root)| {
            let json = branch_json(BranchPtr::from(root.try_branch()?), &txn, 0)?;
            Some((name.to_owned(), json))
        })
        .collect();
    Value::Object(roots.into_iter().collect())
}

/// One difference between two JSON values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// Where the values differ, as a JSON pointer (RFC 6901), e.g. `/itinerary/2/title`.
    pub path: String,
    /// `"added"`, `"removed"` or `"changed"`.
    pub op: &'static str,
    /// The value before, unless it was added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value after, unless it was removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// Structural diff: objects member by member (recursively), arrays element by element by index
/// (recursively; extra elements are added or removed), anything else compared as a whole.
///
/// Ordered by path, segment by segment: member names in byte order, array indices in numeric
/// order. Empty when the values are equal.
pub fn diff(from: &Value, to: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    compare(&mut String::new(), from, to, &mut changes);
    changes
}

/// Makes `doc`'s content equal to `target`'s with a forward change (history is kept), and
/// returns that change as a v1-encoded update for the other replicas.
///
/// In one write transaction on `doc`, for every root of either document: keys absent from
/// `target` are removed, keys whose value differs are set to a copy of `target`'s (nested shared
/// types are recreated as new shared types with the same content); a text is replaced as a whole
/// (formatting and embeds included) unless it is equal; a list keeps its common first and last
/// elements and replaces those in between. Roots `target` lacks are emptied. Afterwards
/// `to_json(doc) == to_json(target)`.
///
/// `doc` must be a top-level document (not a subdocument). Reads `target` completely before it
/// writes, so both may be the same document; blocks until no other transaction is open on either.
pub fn restore(doc: &Doc, target: &Doc) -> Vec<u8> {
    let mut wanted: BTreeMap<String, Content> = {
        let txn = target.transact();
        txn.root_refs()
            .filter_map(|(name, root)| {
                let content = Content::read(BranchPtr::from(root.try_branch()?), &txn);
                Some((name.to_owned(), content))
            })
            .collect()
    };
    let mut txn = doc.transact_mut();
    let present: Vec<(String, BranchPtr)> = txn
        .root_refs()
        .filter_map(|(name, root)| Some((name.to_owned(), BranchPtr::from(root.try_branch()?))))
        .collect();
    for (name, branch) in present {
        wanted
            .remove(&name)
            .unwrap_or_default()
            .write(branch, &mut txn);
    }
    for (name, content) in wanted {
        if let Some(branch) = content.new_root(name, &mut txn) {
            content.write(branch, &mut txn);
        }
    }
    txn.commit();
    txn.encode_update_v1()
}

/// The sequence part of a shared type, read by what it holds.
enum Sequence {
    /// Characters or embeds (Y.Text, Y.XmlText), as formatted chunks.
    Text(Vec<Diff<()>>),
    /// Elements (Y.Array, XML children), possibly none.
    List(Vec<Out>),
}

fn sequence<T: ReadTxn>(branch: BranchPtr, txn: &T) -> Sequence {
    if branch.len() == 0 {
        return Sequence::List(Vec::new());
    }
    let chunks = TextRef::from(branch).diff(txn, |_| ());
    if chunks.iter().any(|chunk| is_text(&chunk.insert)) {
        Sequence::Text(chunks)
    } else {
        Sequence::List(ArrayRef::from(branch).iter(txn).collect())
    }
}

/// Whether a text chunk makes its sequence a text: characters or a non-empty embed. (A text
/// diff skips array elements, so these occur in text-like sequences only.)
fn is_text(insert: &Out) -> bool {
    match insert {
        Out::Any(Any::String(s)) => !s.is_empty(),
        Out::Any(_) => true,
        _ => false,
    }
}

fn is_xml(value: &Out) -> bool {
    matches!(
        value,
        Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_)
    )
}

/// The map part of a shared type (Y.Map entries, XML attributes), sorted by key.
fn entries<T: ReadTxn>(branch: BranchPtr, txn: &T) -> BTreeMap<String, Out> {
    MapRef::from(branch)
        .iter(txn)
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

fn ptr(shared: &impl AsRef<Branch>) -> BranchPtr {
    BranchPtr::from(shared.as_ref())
}

/// A branch projected by its content, `None` when it has none.
fn branch_json<T: ReadTxn>(branch: BranchPtr, txn: &T, depth: usize) -> Option<Value> {
    match sequence(branch, txn) {
        Sequence::Text(chunks) => Some(Value::String(text_of(&chunks))),
        Sequence::List(items) if items.is_empty() => {
            let members = entries(branch, txn);
            (!members.is_empty()).then(|| object(&members, txn, depth))
        }
        Sequence::List(items) if items.iter().all(is_xml) => Some(Value::String(
            items.iter().map(|item| xml(item, txn, depth + 1)).collect(),
        )),
        Sequence::List(items) => Some(Value::Array(
            items
                .iter()
                .map(|item| out_json(item, txn, depth + 1))
                .collect(),
        )),
    }
}

fn text_of(chunks: &[Diff<()>]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| match &chunk.insert {
            Out::Any(Any::String(s)) => Some(&**s),
            _ => None,
        })
        .collect()
}

fn object<T: ReadTxn>(members: &BTreeMap<String, Out>, txn: &T, depth: usize) -> Value {
    Value::Object(
        members
            .iter()
            .map(|(key, value)| (key.clone(), out_json(value, txn, depth + 1)))
            .collect(),
    )
}

fn out_json<T: ReadTxn>(value: &Out, txn: &T, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match value {
        Out::Any(any) => any_json(any, depth),
        Out::YText(text) => Value::String(text_of(&text.diff(txn, |_| ()))),
        Out::YArray(array) => Value::Array(
            array
                .iter(txn)
                .map(|item| out_json(&item, txn, depth + 1))
                .collect(),
        ),
        Out::YMap(map) => object(&entries(ptr(map), txn), txn, depth),
        Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_) => {
            Value::String(xml(value, txn, depth))
        }
        Out::YDoc(subdoc) => serde_json::json!({ "guid": &*subdoc.guid() }),
        other => other
            .try_branch()
            .and_then(|branch| branch_json(BranchPtr::from(branch), txn, depth))
            .unwrap_or(Value::Null),
    }
}

fn any_json(any: &Any, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(n)) => Value::from(*n),
        Any::Number(Number::Float(f)) if f.fract() == 0.0 && f.abs() < 2f64.powi(63) => {
            Value::from(*f as i64)
        }
        Any::Number(Number::Float(f)) => Value::from(*f),
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Any::Array(items) => Value::Array(items.iter().map(|i| any_json(i, depth + 1)).collect()),
        Any::Map(members) => {
            let sorted: BTreeMap<&String, &Any> = members.iter().collect();
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(key, value)| (key.clone(), any_json(value, depth + 1)))
                    .collect(),
            )
        }
    }
}

/// A value as text: strings as they are, anything else as JSON.
fn plain(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// An XML node as Yjs' `toString()` writes it (no escaping), with attributes sorted by name.
fn xml<T: ReadTxn>(node: &Out, txn: &T, depth: usize) -> String {
    if depth > MAX_DEPTH {
        return String::new();
    }
    let children = |branch: BranchPtr| -> String {
        ArrayRef::from(branch)
            .iter(txn)
            .map(|child| plain(out_json(&child, txn, depth + 1)))
            .collect()
    };
    match node {
        Out::YXmlElement(element) => {
            let tag = element.tag();
            let mut s = format!("<{tag}");
            for (name, value) in entries(ptr(element), txn) {
                let _ = write!(s, " {name}=\"{}\"", plain(out_json(&value, txn, depth + 1)));
            }
            let _ = write!(s, ">{}</{tag}>", children(ptr(element)));
            s
        }
        Out::YXmlFragment(fragment) => children(ptr(fragment)),
        Out::YXmlText(text) => {
            let mut s = String::new();
            for chunk in text.diff(txn, |_| ()) {
                let mut nodes: Vec<_> = chunk.attributes.iter().flat_map(|a| a.iter()).collect();
                nodes.sort_by(|a, b| a.0.cmp(b.0));
                for (name, value) in &nodes {
                    let _ = write!(s, "<{name}");
                    if let Any::Map(attributes) = value {
                        let sorted: BTreeMap<_, _> = attributes.iter().collect();
                        for (key, value) in sorted {
                            let _ = write!(s, " {key}=\"{}\"", plain(any_json(value, depth + 1)));
                        }
                    }
                    s.push('>');
                }
                s.push_str(&plain(out_json(&chunk.insert, txn, depth + 1)));
                for (name, _) in nodes.iter().rev() {
                    let _ = write!(s, "</{name}>");
                }
            }
            s
        }
        other => plain(out_json(other, txn, depth)),
    }
}

/// A root's content as `restore` writes it: both parts of the branch, copied out of `target`.
#[derive(Default)]
struct Content {
    members: BTreeMap<String, Copied>,
    sequence: Elements,
}

enum Elements {
    Text(Vec<Delta<In>>),
    List(Vec<Copied>),
}

impl Default for Elements {
    fn default() -> Self {
        Elements::List(Vec::new())
    }
}

impl Content {
    fn read<T: ReadTxn>(branch: BranchPtr, txn: &T) -> Self {
        let sequence = match sequence(branch, txn) {
            Sequence::Text(chunks) => Elements::Text(deltas(&chunks, txn)),
            Sequence::List(items) => Elements::List(copy_items(&items, txn, 0)),
        };
        Content {
            members: copy_members(branch, txn, 0),
            sequence,
        }
    }

    /// Creates a root of the kind this content reads as, unless the content is empty.
    fn new_root(&self, name: String, txn: &mut TransactionMut) -> Option<BranchPtr> {
        Some(match &self.sequence {
            Elements::Text(_) => ptr(&txn.get_or_insert_text(name)),
            Elements::List(items) if items.is_empty() && self.members.is_empty() => return None,
            Elements::List(items) if items.is_empty() => ptr(&txn.get_or_insert_map(name)),
            Elements::List(items) if items.iter().all(Copied::is_xml) => {
                ptr(&txn.get_or_insert_xml_fragment(name))
            }
            Elements::List(_) => ptr(&txn.get_or_insert_array(name)),
        })
    }

    fn write(self, branch: BranchPtr, txn: &mut TransactionMut) {
        let map = MapRef::from(branch);
        let mut members = self.members;
        for (key, value) in entries(branch, txn) {
            match members.remove(&key) {
                None => {
                    map.remove(txn, &key);
                }
                Some(wanted) if copy(&value, txn, 1) == wanted => {}
                Some(wanted) => set(&map, txn, key, wanted),
            }
        }
        for (key, wanted) in members {
            set(&map, txn, key, wanted);
        }
        match self.sequence {
            Elements::Text(wanted) => write_text(branch, wanted, txn),
            Elements::List(wanted) => write_list(branch, wanted, txn),
        }
    }
}

/// A value copied out of a document, to be written into another one. Maps, lists and
/// subdocuments are written level by level (yrs' `In::Doc` would not make a subdocument).
#[derive(Debug, PartialEq)]
enum Copied {
    /// A plain value, or a text or XML node that yrs copies as a whole.
    Leaf(In),
    Map(BTreeMap<String, Copied>),
    List(Vec<Copied>),
    Doc(Doc),
}

impl Copied {
    fn is_xml(&self) -> bool {
        matches!(
            self,
            Copied::Leaf(In::XmlElement(_) | In::XmlFragment(_) | In::XmlText(_))
        )
    }
}

impl From<Copied> for In {
    fn from(value: Copied) -> Self {
        match value {
            Copied::Leaf(leaf) => leaf,
            Copied::Map(members) => In::Map(
                members
                    .into_iter()
                    .map(|(key, value)| (key, In::from(value)))
                    .collect(),
            ),
            Copied::List(items) => In::Array(items.into_iter().map(In::from).collect()),
            Copied::Doc(doc) => In::Doc(doc),
        }
    }
}

fn deltas<T: ReadTxn>(chunks: &[Diff<()>], txn: &T) -> Vec<Delta<In>> {
    chunks
        .iter()
        .map(|chunk| {
            let insert = In::from(copy(&chunk.insert, txn, 1));
            Delta::Inserted(insert, chunk.attributes.clone())
        })
        .collect()
}

/// Copies of a branch's map part, whose members are at `depth + 1`.
fn copy_members<T: ReadTxn>(branch: BranchPtr, txn: &T, depth: usize) -> BTreeMap<String, Copied> {
    entries(branch, txn)
        .into_iter()
        .map(|(key, value)| {
            let value = copy(&value, txn, depth + 1);
            (key, value)
        })
        .collect()
}

/// Copies of a branch's elements, which are at `depth + 1`.
fn copy_items<T: ReadTxn>(items: &[Out], txn: &T, depth: usize) -> Vec<Copied> {
    items
        .iter()
        .map(|item| copy(item, txn, depth + 1))
        .collect()
}

/// A copy of `value`; values beyond [`MAX_DEPTH`] become `null`, as they are projected. Texts
/// and XML trees are copied by yrs as a whole.
fn copy<T: ReadTxn>(value: &Out, txn: &T, depth: usize) -> Copied {
    if depth > MAX_DEPTH {
        return Copied::Leaf(In::Any(Any::Null));
    }
    match value {
        Out::Any(any) => Copied::Leaf(In::Any(any.clone())),
        Out::YText(_) | Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_) => {
            Copied::Leaf(value.as_prelim(txn))
        }
        Out::YArray(array) => {
            let items: Vec<Out> = array.iter(txn).collect();
            Copied::List(copy_items(&items, txn, depth))
        }
        Out::YMap(map) => Copied::Map(copy_members(ptr(map), txn, depth)),
        Out::YDoc(subdoc) => Copied::Doc(Doc::with_options(Options {
            guid: subdoc.guid(),
            collection_id: subdoc.collection_id(),
            auto_load: subdoc.auto_load(),
            should_load: subdoc.should_load(),
            ..Options::default()
        })),
        other => match other.try_branch() {
            Some(branch) => branch_copy(BranchPtr::from(branch), txn, depth),
            None => Copied::Leaf(In::Any(Any::Null)),
        },
    }
}

/// A copy of a nested branch of no known type, read as [`branch_json`] projects it.
fn branch_copy<T: ReadTxn>(branch: BranchPtr, txn: &T, depth: usize) -> Copied {
    match sequence(branch, txn) {
        Sequence::Text(_) => Copied::Leaf(In::Text(TextRef::from(branch).as_prelim(txn))),
        Sequence::List(items) if items.is_empty() => {
            let members = copy_members(branch, txn, depth);
            if members.is_empty() {
                Copied::Leaf(In::Any(Any::Null))
            } else {
                Copied::Map(members)
            }
        }
        Sequence::List(items) if items.iter().all(is_xml) => {
            Copied::Leaf(In::XmlFragment(XmlFragmentRef::from(branch).as_prelim(txn)))
        }
        Sequence::List(items) => Copied::List(copy_items(&items, txn, depth)),
    }
}

fn set(map: &MapRef, txn: &mut TransactionMut, key: String, value: Copied) {
    match value {
        Copied::Leaf(leaf) => {
            map.insert(txn, key, leaf);
        }
        Copied::Doc(doc) => {
            map.insert(txn, key, doc);
        }
        Copied::Map(members) => {
            let inner = map.insert(txn, key, MapPrelim::default());
            for (key, value) in members {
                set(&inner, txn, key, value);
            }
        }
        Copied::List(items) => {
            let inner = map.insert(txn, key, ArrayPrelim::default());
            insert_all(&inner, txn, 0, items);
        }
    }
}

/// Inserts `items` from `index` on, consecutive plain values as one block.
fn insert_all(
    array: &ArrayRef,
    txn: &mut TransactionMut,
    mut index: u32,
    items: impl IntoIterator<Item = Copied>,
) {
    let mut run = Vec::new();
    for item in items {
        if let Copied::Leaf(In::Any(any)) = item {
            run.push(any);
            continue;
        }
        let len = run.len() as u32;
        array.insert_range(txn, index, run.drain(..));
        index += len;
        match item {
            Copied::Leaf(leaf) => {
                array.insert(txn, index, leaf);
            }
            Copied::Doc(doc) => {
                array.insert(txn, index, doc);
            }
            Copied::Map(members) => {
                let inner = array.insert(txn, index, MapPrelim::default());
                for (key, value) in members {
                    set(&inner, txn, key, value);
                }
            }
            Copied::List(items) => {
                let inner = array.insert(txn, index, ArrayPrelim::default());
                insert_all(&inner, txn, 0, items);
            }
        }
        index += 1;
    }
    array.insert_range(txn, index, run);
}

/// Deletes every element, character and embed of the branch's sequence.
fn clear(branch: BranchPtr, txn: &mut TransactionMut) {
    let len = branch.content_len();
    if len > 0 {
        ArrayRef::from(branch).remove_range(txn, 0, len);
    }
}

fn write_text(branch: BranchPtr, wanted: Vec<Delta<In>>, txn: &mut TransactionMut) {
    if let Sequence::Text(chunks) = sequence(branch, txn) {
        if deltas(&chunks, txn) == wanted {
            return;
        }
    }
    clear(branch, txn);
    TextRef::from(branch).apply_delta(txn, wanted);
}

fn write_list(branch: BranchPtr, wanted: Vec<Copied>, txn: &mut TransactionMut) {
    let current = match sequence(branch, txn) {
        // One index per element, so positions can be kept.
        Sequence::List(items) if items.len() == branch.content_len() as usize => {
            copy_items(&items, txn, 0)
        }
        Sequence::List(_) | Sequence::Text(_) => {
            clear(branch, txn);
            Vec::new()
        }
    };
    let head = current
        .iter()
        .zip(&wanted)
        .take_while(|(a, b)| a == b)
        .count();
    let tail = current[head..]
        .iter()
        .rev()
        .zip(wanted[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let array = ArrayRef::from(branch);
    let stale = current.len() - head - tail;
    if stale > 0 {
        array.remove_range(txn, head as u32, stale as u32);
    }
    let end = wanted.len() - tail;
    insert_all(
        &array,
        txn,
        head as u32,
        wanted.into_iter().take(end).skip(head),
    );
}

fn compare(path: &mut String, from: &Value, to: &Value, changes: &mut Vec<Change>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                let len = path.len();
                path.push('/');
                path.push_str(&name.replace('~', "~0").replace('/', "~1"));
                compare_member(path, a.get(name), b.get(name), changes);
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for index in 0..a.len().max(b.len()) {
                let len = path.len();
                let _ = write!(path, "/{index}");
                compare_member(path, a.get(index), b.get(index), changes);
                path.truncate(len);
            }
        }
        _ if from != to => changes.push(Change {
            path: path.clone(),
            op: "changed",
            from: Some(from.clone()),
            to: Some(to.clone()),
        }),
        _ => {}
    }
}

fn compare_member(
    path: &mut String,
    from: Option<&Value>,
    to: Option<&Value>,
    changes: &mut Vec<Change>,
) {
    match (from, to) {
        (Some(from), Some(to)) => compare(path, from, to, changes),
        (from, to) => changes.push(Change {
            path: path.clone(),
            op: if from.is_some() { "removed" } else { "added" },
            from: from.cloned(),
            to: to.cloned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use yrs::updates::decoder::Decode;
    use yrs::{
        any, StateVector, TextPrelim, Update, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn apply(doc: &Doc, update: &[u8]) {
        let update = Update::decode_v1(update).expect("update decodes");
        doc.transact_mut()
            .apply_update(update)
            .expect("update applies");
    }

    /// A document that only ever received updates, as the server holds it: its roots have no
    /// declared type.
    fn from_updates(updates: &[Vec<u8>]) -> Doc {
        let doc = Doc::new();
        for update in updates {
            apply(&doc, update);
        }
        doc
    }

    fn sync(a: &Doc, b: &Doc) {
        apply(b, &state(a));
        apply(a, &state(b));
    }

    /// The trip document of seed §4.1, version 1, written by replica `client`.
    fn trip_v1(client: u64) -> Doc {
        let doc = Doc::with_client_id(client);
        let mut txn = doc.transact_mut();
        txn.get_or_insert_text("title")
            .push(&mut txn, "Lisbon in May");
        txn.get_or_insert_text("description")
            .push(&mut txn, "Five days by the sea");
        let itinerary = txn.get_or_insert_array("itinerary");
        for (day, title) in [(1, "Alfama"), (2, "Belém"), (3, "Sintra")] {
            let item = itinerary.push_back(&mut txn, MapPrelim::default());
            item.insert(&mut txn, "day", day);
            item.insert(&mut txn, "title", title);
            item.insert(&mut txn, "notes", TextPrelim::new(format!("day {day}")));
        }
        let budget = txn.get_or_insert_map("budget");
        budget.insert(&mut txn, "currency", "EUR");
        budget.insert(&mut txn, "total", 1200);
        budget.insert(
            &mut txn,
            "items",
            MapPrelim::from([("flights", In::from(350.5))]),
        );
        txn.get_or_insert_text("notes")
            .push(&mut txn, "Book the tram");
        txn.get_or_insert_array("comments")
            .push_back(&mut txn, any!({"author": "bob", "text": "Sounds great"}));
        let collaborators = txn.get_or_insert_map("collaborators");
        collaborators.insert(&mut txn, "alice", "owner");
        collaborators.insert(&mut txn, "bob", "editor");
        drop(txn);
        doc
    }

    fn trip_v1_json() -> Value {
        json!({
            "budget": {"currency": "EUR", "items": {"flights": 350.5}, "total": 1200},
            "collaborators": {"alice": "owner", "bob": "editor"},
            "comments": [{"author": "bob", "text": "Sounds great"}],
            "description": "Five days by the sea",
            "itinerary": [
                {"day": 1, "notes": "day 1", "title": "Alfama"},
                {"day": 2, "notes": "day 2", "title": "Belém"},
                {"day": 3, "notes": "day 3", "title": "Sintra"},
            ],
            "notes": "Book the tram",
            "title": "Lisbon in May",
        })
    }

    #[test]
    fn trip_document_projects_every_root_alike_on_every_replica() {
        let alice = trip_v1(1);
        let bob = Doc::with_client_id(2);
        sync(&alice, &bob);
        {
            let mut txn = bob.transact_mut();
            txn.get_or_insert_text("title").push(&mut txn, "!");
            txn.get_or_insert_map("budget")
                .insert(&mut txn, "total", 1500);
        }
        {
            let mut txn = alice.transact_mut();
            txn.get_or_insert_map("budget")
                .insert(&mut txn, "currency", "USD");
        }
        let server = from_updates(&[state(&alice), state(&bob)]);
        let mut expected = trip_v1_json();
        expected["title"] = json!("Lisbon in May!");
        expected["budget"]["total"] = json!(1500);
        expected["budget"]["currency"] = json!("USD");
        assert_eq!(to_json(&server), expected);
        sync(&alice, &bob);
        assert_eq!(to_json(&alice), expected);
        assert_eq!(to_json(&bob), expected);
    }

    #[test]
    fn empty_and_emptied_roots_are_omitted() {
        let doc = Doc::new();
        assert_eq!(to_json(&doc), json!({}));
        {
            let mut txn = doc.transact_mut();
            txn.get_or_insert_map("budget");
            txn.get_or_insert_array("itinerary");
            let title = txn.get_or_insert_text("title");
            title.push(&mut txn, "gone");
            title.remove_range(&mut txn, 0, 4);
        }
        assert_eq!(to_json(&doc), json!({}));
        assert_eq!(to_json(&from_updates(&[state(&doc)])), json!({}));
    }

    #[test]
    fn unusual_values_project_deterministically_and_restore() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let body = txn.get_or_insert_xml_fragment("body");
            let p = body.push_back(&mut txn, XmlElementPrelim::empty("p"));
            p.insert_attribute(&mut txn, "id", "intro");
            p.insert_attribute(&mut txn, "class", "lead");
            let text = p.push_back(&mut txn, XmlTextPrelim::new("hello world"));
            text.format(&mut txn, 6, 5, [("b".into(), Any::Bool(true))].into());
            let data = txn.get_or_insert_map("data");
            data.insert(&mut txn, "bytes", vec![1u8, 2, 3]);
            data.insert(&mut txn, "whole", 2.0);
            data.insert(&mut txn, "half", 2.5);
            data.insert(&mut txn, "nothing", Any::Undefined);
            data.insert(&mut txn, "nested", any!({"z": 1, "a": [true, null]}));
            let options = Options {
                guid: "trip-42-photos".into(),
                ..Options::default()
            };
            data.insert(&mut txn, "photos", Doc::with_options(options));
        }
        let expected = json!({
            "body": "<p class=\"lead\" id=\"intro\">hello <b>world</b></p>",
            "data": {
                "bytes": "AQID",
                "half": 2.5,
                "nested": {"a": [true, null], "z": 1},
                "nothing": null,
                "photos": {"guid": "trip-42-photos"},
                "whole": 2,
            },
        });
        assert_eq!(to_json(&doc), expected);
        assert_eq!(to_json(&from_updates(&[state(&doc)])), expected);
        let copy = Doc::new();
        restore(&copy, &from_updates(&[state(&doc)]));
        assert_eq!(to_json(&copy), expected);
    }

    /// Restores `doc` to `target` and checks both `doc` and a replica that receives only the
    /// returned update.
    fn assert_restores(doc: &Doc, target: &Doc, expected: &Value) {
        let replica = from_updates(&[state(doc)]);
        let update = restore(doc, target);
        assert_eq!(&to_json(doc), expected);
        apply(&replica, &update);
        assert_eq!(&to_json(&replica), expected);
    }

    #[test]
    fn a_root_written_as_two_kinds_by_different_clients_is_read_and_restored() {
        let text_writer = Doc::with_client_id(1);
        text_writer
            .get_or_insert_text("x")
            .push(&mut text_writer.transact_mut(), "héllo");
        let other_writer = Doc::with_client_id(2);
        {
            let mut txn = other_writer.transact_mut();
            txn.get_or_insert_array("x")
                .insert_range(&mut txn, 0, [1, 2]);
            txn.get_or_insert_map("x").insert(&mut txn, "k", "v");
        }
        let server = from_updates(&[state(&text_writer), state(&other_writer)]);
        assert_eq!(to_json(&server), json!({"x": "héllo"}));

        let target = Doc::new();
        target
            .get_or_insert_array("x")
            .push_back(&mut target.transact_mut(), 3);
        assert_restores(&server, &target, &json!({"x": [3]}));
        assert_restores(&server, &text_writer, &json!({"x": "héllo"}));
        assert_restores(&server, &other_writer, &json!({"x": [1, 2]}));
        assert_restores(&server, &Doc::new(), &json!({}));
    }

    #[test]
    fn nesting_beyond_the_limit_is_cut_off_not_recursed_into() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let mut array = txn.get_or_insert_array("deep");
            for _ in 0..10_000 {
                array = array.push_back(&mut txn, ArrayPrelim::default());
            }
        }
        let json = to_json(&doc);
        let mut value = &json["deep"];
        let mut depth = 0;
        while let Value::Array(items) = value {
            value = &items[0];
            depth += 1;
        }
        assert_eq!(
            (depth, value),
            (1 + MAX_DEPTH, &Value::Null),
            "the root, then its members"
        );

        let copy = Doc::new();
        restore(&copy, &doc);
        assert_eq!(to_json(&copy), json);
    }

    fn change(path: &str, op: &'static str, from: Option<Value>, to: Option<Value>) -> Change {
        Change {
            path: path.into(),
            op,
            from,
            to,
        }
    }

    #[test]
    fn diff_reports_each_difference_in_path_order() {
        let from = json!({
            "title": "A",
            "itinerary": [{"day": 1, "title": "x"}, {"day": 2}],
            "budget": {"a/b": 1, "m~n": 2, "gone": true},
        });
        let to = json!({
            "title": "B",
            "itinerary": [{"day": 1, "title": "y"}, {"day": 2}, {"day": 3}],
            "budget": {"a/b": 1, "m~n": 3, "new": null},
            "notes": "n",
        });
        assert_eq!(
            diff(&from, &to),
            vec![
                change("/budget/gone", "removed", Some(json!(true)), None),
                change("/budget/m~0n", "changed", Some(json!(2)), Some(json!(3))),
                change("/budget/new", "added", None, Some(json!(null))),
                change(
                    "/itinerary/0/title",
                    "changed",
                    Some(json!("x")),
                    Some(json!("y"))
                ),
                change("/itinerary/2", "added", None, Some(json!({"day": 3}))),
                change("/notes", "added", None, Some(json!("n"))),
                change("/title", "changed", Some(json!("A")), Some(json!("B"))),
            ]
        );
        assert_eq!(
            diff(&json!({"a/b": {"c~": [1]}}), &json!({"a/b": {"c~": [2]}})),
            vec![change(
                "/a~1b/c~0/0",
                "changed",
                Some(json!(1)),
                Some(json!(2))
            )]
        );
    }

    #[test]
    fn diff_orders_indices_numerically_and_compares_other_values_whole() {
        let from = json!({"list": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "kind": {"a": 1}});
        let mut to = from.clone();
        to["list"][2] = json!("two");
        to["list"][10] = json!("ten");
        to["kind"] = json!([1]);
        let paths: Vec<String> = diff(&from, &to).into_iter().map(|c| c.path).collect();
        assert_eq!(paths, ["/kind", "/list/2", "/list/10"]);
        assert_eq!(
            diff(&json!([1, 2, 3]), &json!([1])),
            vec![
                change("/1", "removed", Some(json!(2)), None),
                change("/2", "removed", Some(json!(3)), None),
            ]
        );
        assert_eq!(
            diff(&json!("a"), &json!(1)),
            vec![change("", "changed", Some(json!("a")), Some(json!(1)))]
        );
        assert!(diff(&trip_v1_json(), &trip_v1_json()).is_empty());
        assert_eq!(
            serde_json::to_value(change("/x", "added", None, Some(json!(1)))).expect("serializes"),
            json!({"path": "/x", "op": "added", "to": 1})
        );
    }

    /// Edits after version 1, by two replicas: text edits, itinerary items removed, changed and
    /// added, budget keys changed and removed, a new root.
    fn edit_after_v1(alice: &Doc, bob: &Doc) {
        {
            let mut txn = alice.transact_mut();
            let title = txn.get_or_insert_text("title");
            title.remove_range(&mut txn, 0, 6);
            title.insert(&mut txn, 0, "Porto");
            let itinerary = txn.get_or_insert_array("itinerary");
            itinerary.remove(&mut txn, 0);
            let item = itinerary.insert(&mut txn, 1, MapPrelim::default());
            item.insert(&mut txn, "day", 4);
            item.insert(&mut txn, "title", "Douro");
            txn.get_or_insert_map("budget").remove(&mut txn, "currency");
            txn.get_or_insert_array("checklist")
                .push_back(&mut txn, "passport");
        }
        {
            let mut txn = bob.transact_mut();
            let budget = txn.get_or_insert_map("budget");
            budget.insert(&mut txn, "total", 2000);
            budget.insert(
                &mut txn,
                "items",
                MapPrelim::from([("hotel", In::from(90))]),
            );
            let notes = txn.get_or_insert_text("notes");
            let len = notes.len(&txn);
            notes.remove_range(&mut txn, 0, len);
            txn.get_or_insert_map("collaborators")
                .insert(&mut txn, "carol", "viewer");
        }
        sync(alice, bob);
        {
            let mut txn = bob.transact_mut();
            if let Some(Out::YMap(item)) = txn.get_or_insert_array("itinerary").get(&txn, 0) {
                item.insert(&mut txn, "title", "Belém and LX Factory");
                if let Some(Out::YText(notes)) = item.get(&txn, "notes") {
                    notes.push(&mut txn, ", pastéis");
                }
            }
            txn.get_or_insert_text("description")
                .push(&mut txn, " and the hills");
        }
        sync(alice, bob);
    }

    #[test]
    fn restore_to_version_one_after_many_edits_is_a_forward_change() {
        let alice = trip_v1(1);
        let v1 = from_updates(&[state(&alice)]);
        let bob = Doc::with_client_id(2);
        sync(&alice, &bob);
        edit_after_v1(&alice, &bob);
        let server = from_updates(&[state(&alice), state(&bob)]);
        let third = from_updates(&[state(&server)]);
        assert_ne!(to_json(&server), trip_v1_json());
        let before = server.transact().state_vector();

        let update = restore(&server, &v1);

        assert_eq!(to_json(&server), trip_v1_json());
        apply(&third, &update);
        assert_eq!(to_json(&third), trip_v1_json());
        apply(&alice, &update);
        assert_eq!(to_json(&alice), trip_v1_json());
        let after = server.transact().state_vector();
        for (client, clock) in before.iter() {
            assert!(after.get(client) >= *clock, "history of {client} kept");
        }
        apply(&server, &state(&bob));
        assert_eq!(to_json(&server), trip_v1_json(), "old updates stay applied");
    }

    #[test]
    fn restore_replaces_roots_of_another_kind() {
        let doc = Doc::with_client_id(1);
        {
            let mut txn = doc.transact_mut();
            txn.get_or_insert_map("x").insert(&mut txn, "a", 1);
            txn.get_or_insert_text("y").push(&mut txn, "hello");
            txn.get_or_insert_array("z")
                .insert_range(&mut txn, 0, [1, 2]);
            txn.get_or_insert_text("w").push(&mut txn, "only here");
        }
        let target = Doc::with_client_id(2);
        {
            let mut txn = target.transact_mut();
            txn.get_or_insert_text("x").push(&mut txn, "now text");
            let y = txn.get_or_insert_array("y");
            y.push_back(&mut txn, 1);
            y.push_back(&mut txn, MapPrelim::from([("k", In::from("v"))]));
            txn.get_or_insert_map("z").insert(&mut txn, "b", 2);
            let v = txn.get_or_insert_xml_fragment("v");
            v.push_back(&mut txn, XmlElementPrelim::empty("hr"));
        }
        let expected =
            json!({"v": "<hr></hr>", "x": "now text", "y": [1, {"k": "v"}], "z": {"b": 2}});
        assert_eq!(to_json(&target), expected);
        let third = from_updates(&[state(&doc)]);

        let update = restore(&doc, &from_updates(&[state(&target)]));

        assert_eq!(to_json(&doc), expected);
        apply(&third, &update);
        assert_eq!(to_json(&third), expected);
        assert_eq!(to_json(&from_updates(&[state(&doc)])), expected);
    }

    #[test]
    fn restore_leaves_equal_parts_alone_so_concurrent_edits_survive() {
        let alice = trip_v1(1);
        let v1 = from_updates(&[state(&alice)]);
        {
            let mut txn = alice.transact_mut();
            let itinerary = txn.get_or_insert_array("itinerary");
            itinerary.remove(&mut txn, 2);
            itinerary.push_back(&mut txn, any!({"day": 9}));
            txn.get_or_insert_map("budget").insert(&mut txn, "total", 1);
        }
        let carol = from_updates(&[state(&alice)]);
        {
            let mut txn = carol.transact_mut();
            if let Some(Out::YMap(item)) = txn.get_or_insert_array("itinerary").get(&txn, 0) {
                item.insert(&mut txn, "title", "Alfama at night");
            }
            txn.get_or_insert_text("description").push(&mut txn, "!");
        }

        let update = restore(&alice, &v1);
        apply(&alice, &state(&carol));
        apply(&carol, &update);

        let mut expected = trip_v1_json();
        expected["itinerary"][0]["title"] = json!("Alfama at night");
        expected["description"] = json!("Five days by the sea!");
        assert_eq!(to_json(&alice), expected);
        assert_eq!(to_json(&carol), expected);

        let before = alice.transact().state_vector();
        restore(&alice, &from_updates(&[state(&alice)]));
        restore(&alice, &alice);
        assert_eq!(alice.transact().state_vector(), before, "nothing to change");
    }

    #[test]
    fn restore_keeps_formatting_and_embeds() {
        let target = Doc::new();
        {
            let mut txn = target.transact_mut();
            let notes = txn.get_or_insert_text("notes");
            notes.push(&mut txn, "pack light");
            notes.format(&mut txn, 0, 4, [("bold".into(), Any::Bool(true))].into());
            notes.insert_embed(&mut txn, 4, any!({"image": "bag.png"}));
        }
        let doc = Doc::new();
        doc.get_or_insert_text("notes")
            .push(&mut doc.transact_mut(), "something else");
        restore(&doc, &target);
        let chunks = |doc: &Doc| {
            let txn = doc.transact();
            let notes = txn.get_text("notes").expect("notes exist");
            notes
                .diff(&txn, |_| ())
                .into_iter()
                .map(|chunk| (chunk.insert, chunk.attributes))
                .collect::<Vec<_>>()
        };
        assert_eq!(chunks(&doc), chunks(&target));
        assert_eq!(to_json(&doc), json!({"notes": "pack light"}));
    }

    #[derive(Debug, Clone)]
    enum Val {
        Int(i64),
        Str(String),
        Text(String),
        Map(Vec<(u8, i64)>),
        List(Vec<i64>),
    }

    impl Val {
        fn prelim(&self) -> In {
            match self {
                Val::Int(n) => In::from(*n),
                Val::Str(s) => In::from(s.as_str()),
                Val::Text(s) => TextPrelim::new(s.as_str()).into(),
                Val::Map(members) => In::Map(
                    members
                        .iter()
                        .map(|(k, v)| (format!("k{k}"), In::from(*v)))
                        .collect(),
                ),
                Val::List(items) => In::Array(items.iter().map(|v| In::from(*v)).collect()),
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Text(usize, usize, usize, usize, String),
        Set(usize, u8, Val),
        Remove(usize, u8),
        Insert(usize, usize, Val),
        Delete(usize, usize),
        Item(usize, usize, u8, Val),
        Misc(usize, bool, String),
        Sync,
    }

    fn val() -> impl Strategy<Value = Val> {
        prop_oneof![
            any::<i64>().prop_map(Val::Int),
            "[a-z ]{0,6}".prop_map(Val::Str),
            "[a-z ]{0,6}".prop_map(Val::Text),
            prop::collection::vec((0u8..4, any::<i64>()), 0..3).prop_map(Val::Map),
            prop::collection::vec(any::<i64>(), 0..3).prop_map(Val::List),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let replica = 0usize..2;
        prop_oneof![
            (
                replica.clone(),
                0usize..3,
                any::<usize>(),
                0usize..4,
                "[a-z ]{0,5}"
            )
                .prop_map(|(r, t, p, d, s)| Op::Text(r, t, p, d, s)),
            (replica.clone(), 0u8..5, val()).prop_map(|(r, k, v)| Op::Set(r, k, v)),
            (replica.clone(), 0u8..5).prop_map(|(r, k)| Op::Remove(r, k)),
            (replica.clone(), any::<usize>(), val()).prop_map(|(r, p, v)| Op::Insert(r, p, v)),
            (replica.clone(), any::<usize>()).prop_map(|(r, p)| Op::Delete(r, p)),
            (replica.clone(), any::<usize>(), 0u8..3, val())
                .prop_map(|(r, p, k, v)| Op::Item(r, p, k, v)),
            (replica, any::<bool>(), "[a-z]{1,4}").prop_map(|(r, t, s)| Op::Misc(r, t, s)),
            Just(Op::Sync),
        ]
    }

    fn run(op: &Op, replicas: &[Doc; 2]) {
        let roots = ["title", "description", "notes"];
        match op {
            Op::Sync => sync(&replicas[0], &replicas[1]),
            Op::Text(r, root, pos, delete, insert) => {
                let mut txn = replicas[*r].transact_mut();
                let text = txn.get_or_insert_text(roots[*root]);
                let len = text.len(&txn);
                let pos = (*pos % (len as usize + 1)) as u32;
                text.remove_range(&mut txn, pos, (*delete as u32).min(len - pos));
                text.insert(&mut txn, pos, insert);
            }
            Op::Set(r, key, value) => {
                let mut txn = replicas[*r].transact_mut();
                txn.get_or_insert_map("budget")
                    .insert(&mut txn, format!("k{key}"), value.prelim());
            }
            Op::Remove(r, key) => {
                let mut txn = replicas[*r].transact_mut();
                txn.get_or_insert_map("budget")
                    .remove(&mut txn, &format!("k{key}"));
            }
            Op::Insert(r, pos, value) => {
                let mut txn = replicas[*r].transact_mut();
                let itinerary = txn.get_or_insert_array("itinerary");
                let pos = (*pos % (itinerary.len(&txn) as usize + 1)) as u32;
                let item = match value {
                    Val::Int(_) => value.prelim(),
                    other => In::Map(MapPrelim::from([("v", other.prelim())])),
                };
                itinerary.insert(&mut txn, pos, item);
            }
            Op::Delete(r, pos) => {
                let mut txn = replicas[*r].transact_mut();
                let itinerary = txn.get_or_insert_array("itinerary");
                let len = itinerary.len(&txn) as usize;
                if len > 0 {
                    itinerary.remove(&mut txn, (*pos % len) as u32);
                }
            }
            Op::Item(r, pos, key, value) => {
                let mut txn = replicas[*r].transact_mut();
                let itinerary = txn.get_or_insert_array("itinerary");
                let len = itinerary.len(&txn) as usize;
                if len > 0 {
                    if let Some(Out::YMap(item)) = itinerary.get(&txn, (*pos % len) as u32) {
                        item.insert(&mut txn, format!("k{key}"), value.prelim());
                    }
                }
            }
            Op::Misc(r, as_text, s) => {
                let mut txn = replicas[*r].transact_mut();
                if *as_text {
                    txn.get_or_insert_text("misc").push(&mut txn, s);
                } else {
                    txn.get_or_insert_map("misc")
                        .insert(&mut txn, s.as_str(), s.as_str());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn restore_after_random_edits_gives_the_version_back(
            ops in prop::collection::vec(op(), 0..40),
            cut in any::<prop::sample::Index>(),
        ) {
            let replicas = [Doc::with_client_id(1), Doc::with_client_id(2)];
            let cut = cut.index(ops.len() + 1);
            for op in &ops[..cut] {
                run(op, &replicas);
            }
            let version = from_updates(&[state(&replicas[0]), state(&replicas[1])]);
            for op in &ops[cut..] {
                run(op, &replicas);
            }
            let server = from_updates(&[state(&replicas[0]), state(&replicas[1])]);
            let third = from_updates(&[state(&server)]);
            let expected = to_json(&version);

            let update = restore(&server, &version);
            prop_assert_eq!(to_json(&server), expected.clone());
            apply(&third, &update);
            prop_assert_eq!(to_json(&third), expected.clone());

            sync(&replicas[0], &replicas[1]);
            restore(&replicas[0], &version);
            prop_assert_eq!(to_json(&replicas[0]), expected);
        }
    }
}
