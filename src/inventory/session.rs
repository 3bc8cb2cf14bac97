//! One connection's side of the inventory channel: the resources it watches, its user's
//! outcome feed, and the `inventory:*` events it sends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::command::InventoryCommand;
use super::{store, Inventory};
use crate::gateway::Refusal;
use crate::hub::{Outbox, Subscription};

/// What a connection's inventory events need from its session.
pub struct Context<'a> {
    pub conn_id: u64,
    pub user: &'a str,
    pub outbox: &'a Arc<Outbox>,
    /// Most resources the connection may watch at once.
    pub max_resources: usize,
    /// The client's message id: the idempotency key of a reservation that gives none.
    pub id: Option<&'a str>,
}

/// A connection's inventory subscriptions.
#[derive(Default)]
pub struct Watching {
    resources: HashMap<String, Arc<Subscription>>,
    /// Registered for the user's reservation outcomes and booking statuses: the user and this
    /// connection's id.
    outcomes: Option<(Arc<str>, u64)>,
}

impl Watching {
    /// A connection's inventory state; its user's reservation outcomes and booking statuses
    /// reach it from now on.
    pub fn start(
        inventory: &Inventory,
        conn_id: u64,
        user: &str,
        outbox: &Arc<Outbox>,
    ) -> Watching {
        Watching {
            resources: HashMap::new(),
            outcomes: Some((inventory.follow_user(conn_id, user, outbox), conn_id)),
        }
    }

    pub async fn handle(
        &mut self,
        inventory: &Inventory,
        cx: Context<'_>,
        command: InventoryCommand,
    ) -> Result<Option<Value>, Refusal> {
        match command {
            InventoryCommand::Subscribe { resources } => {
                self.subscribe(inventory, &cx, &resources).await.map(Some)
            }
            InventoryCommand::Unsubscribe { resources } => {
                let mut removed = Vec::new();
                let mut not_subscribed = Vec::new();
                for id in resources {
                    match self.resources.remove(&id) {
                        Some(sub) => {
                            inventory.unwatch(&id, &sub);
                            removed.push(id);
                        }
                        None => not_subscribed.push(id),
                    }
                }
                Ok(Some(
                    json!({ "resources": removed, "not_subscribed": not_subscribed }),
                ))
            }
            InventoryCommand::Reserve {
                resource_id,
                quantity,
                key,
            } => {
                let key = key.as_deref().or(cx.id);
                store::reserve(&inventory.pool, &resource_id, cx.user, quantity, key)
                    .await
                    .map(Some)
            }
            InventoryCommand::Release { reservation_id } => {
                store::release(&inventory.pool, reservation_id, cx.user)
                    .await
                    .map(Some)
            }
        }
    }

    /// Watches `ids` (live at once), then sends each one's current state as `inventory:update`,
    /// followed by any newer state streamed meanwhile. Unknown resources are not watched.
    async fn subscribe(
        &mut self,
        inventory: &Inventory,
        cx: &Context<'_>,
        ids: &[String],
    ) -> Result<Value, Refusal> {
        let mut asked = HashSet::new();
        let ids: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| asked.insert(*id))
            .collect();
        let fresh: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.resources.contains_key(*id))
            .collect();
        if self.resources.len() + fresh.len() > cx.max_resources {
            return Err(Refusal::new(
                "too_many_subscriptions",
                format!(
                    "a connection may watch at most {} resources ({} watched now)",
                    cx.max_resources,
                    self.resources.len()
                ),
            ));
        }
        let subs: Vec<_> = fresh.iter().map(|id| inventory.watch(id, cx)).collect();
        let states = match store::states(&inventory.pool, &ids).await {
            Ok(states) => states,
            Err(refusal) => {
                for (id, sub) in fresh.iter().zip(&subs) {
                    inventory.unwatch(id, sub);
                }
                return Err(refusal);
            }
        };
        let by_id: HashMap<&str, _> = states.iter().map(|s| (s.resource_id.as_str(), s)).collect();
        for (id, sub) in fresh.into_iter().zip(subs) {
            if by_id.contains_key(id) {
                self.resources.insert(id.to_owned(), sub);
            } else {
                inventory.unwatch(id, &sub);
            }
        }
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for id in ids {
            let Some(state) = by_id.get(id) else {
                unknown.push(id);
                continue;
            };
            cx.outbox.push(state.frame());
            if let Some(newer) = inventory.newer_than(id, state.version) {
                cx.outbox.push(newer);
            }
            known.push(id);
        }
        Ok(json!({ "resources": known, "unknown": unknown }))
    }

    /// Leaves everything; called once when the connection ends.
    pub fn close(&mut self, inventory: &Inventory) {
        for (id, sub) in self.resources.drain() {
            inventory.unwatch(&id, &sub);
        }
        if let Some((user, conn_id)) = self.outcomes.take() {
            inventory.unfollow_user(&user, conn_id);
        }
    }
}
