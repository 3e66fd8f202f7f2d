//! The enforced interface's life, from link notifications (rtnetlink,
//! RTNLGRP_LINK of the network namespace the daemon runs in), not polling;
//! and the route and address notifications (RTNLGRP_IPV4/IPV6_ROUTE and
//! _IFADDR) that tell the daemon to re-read the routing tables
//! (`kernel::routes`).
//!
//! When the interface is deleted the kernel detaches the enforcer from it
//! (TCX links turn defunct, clsact filters go): nothing is enforced on an
//! interface that no longer exists, and an interface created later with the
//! same name starts unfiltered. So the daemon reports the deletion at once
//! (a log line; `fw status` exits 1 and `fw_interface_up` reads 0, both
//! from the kernel), and when an interface with the instance's name appears
//! it attaches the pinned programs to it ([`loader::reattach`]) and records
//! the new index in the state, which is what lets `fw status` exit 0 again.
//! The same reconciliation gives systemd its READY=1 ([`readiness`]).
//!
//! Order matters: subscribe first, then look at the interface
//! ([`Watcher::reconcile`]), so that a change between the two is seen by
//! one or the other. Every event about the interface (its name or its index)
//! leads to the same reconciliation, which compares the kernel with the
//! state and repairs; it is idempotent, so a lost or duplicate event (a
//! netlink overrun included) costs nothing but one more look.

use anyhow::{anyhow, Context, Result};
use futures::{channel::mpsc::UnboundedReceiver, StreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    },
    sys::SocketAddr,
    MulticastGroup,
};

use crate::{daemon::readiness, instance, instance::lock, kernel::linkinfo, kernel::loader};

/// A link notification, reduced to what the watcher needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// RTM_DELLINK: an interface is gone (deleted, or moved to another
    /// namespace).
    Gone { ifindex: u32, name: Option<String> },
    /// RTM_NEWLINK: an interface was created, or changed (flags, name...).
    Appeared { ifindex: u32, name: Option<String> },
    /// A route or an address was added or removed, in any table.
    Routes,
    /// The kernel dropped notifications (socket buffer full): anything may
    /// have happened.
    Overrun,
}

impl LinkEvent {
    fn from_message(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
        let name = |link: &LinkMessage| {
            link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
        };
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                Some(LinkEvent::Appeared { ifindex: link.header.index, name: name(&link) })
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                Some(LinkEvent::Gone { ifindex: link.header.index, name: name(&link) })
            }
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(_)
                | RouteNetlinkMessage::DelRoute(_)
                | RouteNetlinkMessage::NewAddress(_)
                | RouteNetlinkMessage::DelAddress(_),
            ) => Some(LinkEvent::Routes),
            NetlinkPayload::Overrun(_) => Some(LinkEvent::Overrun),
            _ => None,
        }
    }

    /// Whether this event may change the state of interface `iface`, last
    /// known with index `ifindex`.
    fn concerns(&self, iface: &str, ifindex: u32) -> bool {
        match self {
            LinkEvent::Gone { ifindex: i, name } | LinkEvent::Appeared { ifindex: i, name } => {
                *i == ifindex || name.as_deref() == Some(iface)
            }
            LinkEvent::Routes | LinkEvent::Overrun => true,
        }
    }
}

/// What a [`Watcher::watch`] heard of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The interface changed; the watcher reconciled.
    Interface,
    /// The routing tables or addresses changed (or notifications were lost,
    /// so they may have): the route maps are to be refreshed.
    Routes,
}

/// Where the interface stands after a reconciliation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// The enforcer is attached to the interface with this index.
    Enforcing(u32),
    /// No interface has the instance's name: nothing to enforce on.
    Missing,
}

/// Link notifications of this network namespace, and what the daemon last
/// reported about its interface.
pub struct Watcher {
    name: String,
    iface: String,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// The last reported presence (None before the first reconciliation).
    reported: Option<Presence>,
    /// The index events are matched against: the last one seen enforced.
    ifindex: u32,
    /// Why the last reconciliation failed, if it did.
    failure: Option<String>,
}

impl Watcher {
    /// Subscribes to RTNLGRP_LINK and the route and address groups. Must
    /// run inside a tokio runtime, which drives the netlink connection.
    pub fn subscribe(name: &str, iface: &str) -> Result<Watcher> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ];
        let (connection, _handle, messages) = rtnetlink::new_multicast_connection(&groups)
            .context("subscribing to link, route and address notifications (netlink)")?;
        tokio::spawn(connection);
        Ok(Watcher {
            name: name.to_string(),
            iface: iface.to_string(),
            messages,
            reported: None,
            ifindex: linkinfo::ifindex_of(iface).unwrap_or(0),
            failure: None,
        })
    }

    /// Waits for the next link event about the interface, then reconciles
    /// ([`Watcher::check`]), or for the next route or address change.
    /// Cancel safe (a `select!` branch): nothing is lost when it is dropped
    /// while waiting. Fails only when the netlink subscription ended and
    /// cannot be made again.
    pub async fn watch(&mut self) -> Result<Heard> {
        let heard = match self.changed().await {
            Ok(LinkEvent::Routes) => return Ok(Heard::Routes),
            Ok(LinkEvent::Gone { .. } | LinkEvent::Appeared { .. }) => Heard::Interface,
            // Anything may have happened: the routes too.
            Ok(LinkEvent::Overrun) => Heard::Routes,
            Err(e) => {
                say_err!("fw: {}: {e:#}: subscribing again", self.name);
                self.messages = Self::subscribe(&self.name, &self.iface)?.messages;
                Heard::Routes
            }
        };
        self.check();
        Ok(heard)
    }

    /// [`Watcher::reconcile`], its failure logged: the enforcer could not be
    /// attached to the interface (`fw status` says so), and the daemon tries
    /// again on the next event or its next tick ([`Watcher::failed`]).
    pub fn check(&mut self) {
        self.failure = match self.reconcile() {
            Ok(_) => None,
            Err(e) => {
                let error = format!("{e:#}");
                // Once per distinct error, not once per retry.
                if self.failure.as_ref() != Some(&error) {
                    say_err!("fw: {}: interface {}: {error}", self.name, self.iface);
                }
                Some(error)
            }
        };
    }

    /// The last [`Watcher::check`] failed.
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Waits for the next link event that concerns the interface.
    async fn changed(&mut self) -> Result<LinkEvent> {
        loop {
            let (message, _) = self.messages.next().await.ok_or_else(|| anyhow!("the netlink subscription ended"))?;
            if let Some(event) = LinkEvent::from_message(message) {
                if event.concerns(&self.iface, self.ifindex) {
                    return Ok(event);
                }
            }
        }
    }

    /// Compares the kernel with the state and repairs: attaches the enforcer
    /// to an interface that has the instance's name but not the enforcer.
    /// Logs (and tells systemd) each change of presence, once.
    pub fn reconcile(&mut self) -> Result<Presence> {
        let state = instance::load_state(&self.name)?;
        let presence = match linkinfo::ifindex_of(&self.iface) {
            None => Presence::Missing,
            Some(ifindex)
                if ifindex == state.ifindex
                    && loader::attached_to(&self.name, state.attach_mode, state.ifindex, &self.iface)? =>
            {
                Presence::Enforcing(ifindex)
            }
            Some(ifindex) => {
                if ifindex != state.ifindex && self.reported != Some(Presence::Missing) {
                    // Deleted and created again before we looked.
                    self.report_missing(state.ifindex);
                }
                Presence::Enforcing(attach_again(&self.name, &self.iface)?)
            }
        };
        match presence {
            Presence::Missing if self.reported != Some(Presence::Missing) => self.report_missing(state.ifindex),
            Presence::Missing => {}
            Presence::Enforcing(ifindex) => {
                if self.reported == Some(Presence::Missing) {
                    say!(
                        "fw: {}: interface {} is back (ifindex {ifindex}): the enforcer is attached to it again",
                        self.name,
                        self.iface
                    );
                }
                if self.reported != Some(presence) {
                    let e = &state.enforced;
                    // The first time: READY=1 (systemd), only now that it enforces.
                    readiness::enforcing(&format!(
                        "enforcing policy {} phase {} on {} (ifindex {ifindex})",
                        e.policy_name, e.phase, self.iface
                    ));
                }
            }
        }
        if let Presence::Enforcing(ifindex) = presence {
            self.ifindex = ifindex;
        }
        self.reported = Some(presence);
        Ok(presence)
    }

    fn report_missing(&mut self, ifindex: u32) {
        say!(
            "fw: {}: interface {} is gone (ifindex {ifindex}): not enforcing until an interface of that name is back",
            self.name,
            self.iface
        );
        readiness::status(&format!("interface {} missing: not enforcing", self.iface));
        self.reported = Some(Presence::Missing);
    }
}

/// Attaches the pinned enforcer of instance `name` to interface `iface`
/// (created again with a new index) and records the index in the state;
/// returns it. Under the instance lock: a switch or rollback never saves a
/// state read before this. Fails (leaving every pin) when the interface is
/// not there or the kernel refuses; the caller reports that.
pub fn attach_again(name: &str, iface: &str) -> Result<u32> {
    let _lock = lock::lock(name)?;
    let mut state = instance::load_state(name)?;
    loader::ensure_program_pins(name)?;
    let mode = loader::reattach(name, iface).with_context(|| format!("attaching the enforcer to {iface} again"))?;
    let ifindex = linkinfo::ifindex_of(iface).ok_or_else(|| anyhow!("interface {iface} went away again"))?;
    anyhow::ensure!(
        loader::attached_to(name, mode, ifindex, iface)?,
        "interface {iface} changed while the enforcer was being attached to it"
    );
    state.ifindex = ifindex;
    state.attach_mode = mode;
    state.save()?;
    // Its on-link prefixes (neighbour discovery) are those of the new one.
    if let Err(e) = loader::RouteMaps::open(name).and_then(|mut m| m.refresh(iface)) {
        say_err!("fw: {name}: refreshing the routes the kernel programs use: {e:#}");
    }
    Ok(ifindex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_concern_the_interface_by_name_or_by_its_last_index() {
        let gone = LinkEvent::Gone { ifindex: 7, name: Some("eth0".into()) };
        assert!(gone.concerns("eth0", 7));
        assert!(gone.concerns("eth0", 3), "same name, another index: a re-created one");
        assert!(gone.concerns("ens5", 7), "our index under another name: renamed, then deleted");
        assert!(!gone.concerns("ens5", 3));
        let appeared = LinkEvent::Appeared { ifindex: 9, name: None };
        assert!(!appeared.concerns("eth0", 7));
        assert!(LinkEvent::Overrun.concerns("eth0", 7));
        assert!(LinkEvent::Routes.concerns("eth0", 7));
    }

    #[test]
    fn link_messages_become_events_with_index_and_name() {
        let link = |index: u32, name: Option<&str>| {
            let mut link = LinkMessage::default();
            link.header.index = index;
            link.attributes.extend(name.map(|n| LinkAttribute::IfName(n.to_string())));
            link
        };
        let event = |m: RouteNetlinkMessage| LinkEvent::from_message(NetlinkMessage::from(m));
        assert_eq!(
            event(RouteNetlinkMessage::DelLink(link(5, Some("eth0")))),
            Some(LinkEvent::Gone { ifindex: 5, name: Some("eth0".into()) })
        );
        assert_eq!(
            event(RouteNetlinkMessage::NewLink(link(6, None))),
            Some(LinkEvent::Appeared { ifindex: 6, name: None })
        );
        assert_eq!(event(RouteNetlinkMessage::DelAddress(Default::default())), Some(LinkEvent::Routes));
        assert_eq!(event(RouteNetlinkMessage::NewRoute(Default::default())), Some(LinkEvent::Routes));
        assert_eq!(event(RouteNetlinkMessage::NewNeighbour(Default::default())), None);
    }
}
