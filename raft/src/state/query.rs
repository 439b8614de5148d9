//! Read-only accessors used by the node (the node decides how fresh a read must be), and the
//! [`HoldView`] built for replies.

use crate::command::{HoldView, Kind, LeaseId, ResourceId, Token};

use super::{ExpiredRecord, Hold, Lease, LeaseState, Resource};

impl LeaseState {
    pub(super) fn view(&self, rid: &ResourceId, hold: &Hold) -> HoldView {
        let resource = self.resources.get(rid);
        HoldView {
            kind: rid.0,
            key: rid.1.clone(),
            owner: hold.owner.clone(),
            token: hold.token,
            lease_id: hold.lease_id,
            ttl_ms: self.leases.get(&hold.lease_id).map_or(0, |l| l.ttl_ms),
            locked_at_ms: hold.locked_at_ms,
            acquisitions: resource.map_or(0, |r| r.acquisitions),
            value: hold.value.clone(),
            limit: resource.map_or(1, |r| r.limit),
        }
    }

    /// The log index of the last applied entry.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The replicated clock: the newest entry timestamp applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// What this replica applied (for metrics).
    pub fn counts(&self) -> super::ApplyCounts {
        self.counts
    }

    pub fn last_token(&self) -> Token {
        self.last_token
    }

    pub fn lease(&self, lease_id: LeaseId) -> Option<&Lease> {
        self.leases.get(&lease_id).map(|l| &**l)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Leases with id greater than `after`, in id order.
    pub fn leases_after(&self, after: LeaseId) -> impl Iterator<Item = &Lease> {
        self.leases
            .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, l)| &**l)
    }

    pub fn resource(&self, kind: Kind, key: &str) -> Option<&Resource> {
        self.resources.get(&(kind, key.to_string())).map(|r| &**r)
    }

    /// Held resources of `kind` whose key starts with `prefix` and sorts after `after`.
    pub fn held_after<'a>(
        &'a self,
        kind: Kind,
        prefix: &'a str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a Resource)> + 'a {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded((kind, after.to_string())),
            None => std::ops::Bound::Included((kind, prefix.to_string())),
        };
        self.resources
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |((k, _), _)| *k == kind)
            .filter(move |((_, key), _)| key.starts_with(prefix))
            .filter(|(_, r)| !r.holders.is_empty())
            .map(|((_, key), r)| (key.as_str(), &**r))
    }

    /// Resources with waiters that are held back by lock-delay: (kind, key, until_ms).
    pub fn delayed(&self) -> impl Iterator<Item = (Kind, &str, u64)> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.waiters.is_empty() && r.holders.len() < r.limit as usize)
            .map(|((kind, key), r)| (*kind, key.as_str(), r.delay_until_ms))
    }

    /// Every live lease as (id, ttl_ms), for a new leader to re-arm.
    pub fn lease_ttls(&self) -> impl Iterator<Item = (LeaseId, u64)> + '_ {
        self.leases.values().map(|l| (l.id, l.ttl_ms))
    }

    /// The most recent expirations, newest first.
    pub fn expired_recent(&self, limit: usize) -> impl Iterator<Item = &ExpiredRecord> {
        self.expired.iter().rev().take(limit)
    }

    /// A hold's public view.
    pub fn hold_view(&self, kind: Kind, key: &str, hold: &Hold) -> HoldView {
        self.view(&(kind, key.to_string()), hold)
    }

    /// The hold of `rid` owned by `owner` with `token`, if it is current.
    pub fn find_hold(&self, kind: Kind, key: &str, owner: &str, token: Token) -> Option<&Hold> {
        self.resource(kind, key).and_then(|r| {
            r.holders
                .iter()
                .find(|h| h.token == token && h.owner == owner)
        })
    }
}
