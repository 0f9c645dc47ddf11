//! Partition assignment strategies, run by the group leader (as Kafka clients do).
//!
//! - [`Strategy::Range`]: per topic, consecutive ranges of partitions to the members
//!   subscribed to it, sorted by member id (Kafka's `range`).
//! - [`Strategy::RoundRobin`]: all partitions in (topic, partition) order dealt out in turn
//!   to the members subscribed to each topic (Kafka's `roundrobin`).
//! - [`Strategy::CooperativeSticky`]: members keep what they own as long as the balance
//!   allows; only the partitions that must move, move; and a partition that changes owner
//!   is withheld for one generation until its old owner has revoked it (Kafka's
//!   `cooperative-sticky`), so no partition is ever consumed by two members at once and
//!   the others keep flowing during the rebalance.

use std::collections::{BTreeMap, BTreeSet};

/// A (topic, partition) pair.
pub type TopicPartition = (String, u32);

/// How the leader assigns partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Consecutive ranges per topic.
    Range,
    /// Dealt out in turn.
    RoundRobin,
    /// Sticky and incremental: only partitions that must move are revoked.
    #[default]
    CooperativeSticky,
}

impl Strategy {
    /// Protocol name in JoinGroup (the same names Kafka clients use).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// The strategy with this protocol name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        [
            Strategy::Range,
            Strategy::RoundRobin,
            Strategy::CooperativeSticky,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Whether members keep their partitions while they rejoin.
    pub fn is_cooperative(self) -> bool {
        self == Strategy::CooperativeSticky
    }
}

/// What the leader knows of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    /// Member id.
    pub member_id: String,
    /// Topics it consumes (patterns already resolved).
    pub topics: BTreeSet<String>,
    /// Partitions it owns now.
    pub owned: Vec<TopicPartition>,
    /// Generation in which it got them (newer wins when two claim one).
    pub generation: i32,
}

/// Member id → partitions.
pub type Assignment = BTreeMap<String, Vec<TopicPartition>>;

/// Assigns `partitions` (topic → partition count) to `members`.
pub fn assign(
    strategy: Strategy,
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
) -> Assignment {
    let mut out: Assignment = members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect();
    match strategy {
        Strategy::Range => range(members, partitions, &mut out),
        Strategy::RoundRobin => round_robin(members, partitions, &mut out),
        Strategy::CooperativeSticky => cooperative_sticky(members, partitions, &mut out),
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn subscribers<'a>(members: &'a [MemberSubscription], topic: &str) -> Vec<&'a str> {
    let mut v: Vec<&str> = members
        .iter()
        .filter(|m| m.topics.contains(topic))
        .map(|m| m.member_id.as_str())
        .collect();
    v.sort();
    v
}

fn range(members: &[MemberSubscription], partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    for (topic, &count) in partitions {
        let subs = subscribers(members, topic);
        if subs.is_empty() {
            continue;
        }
        let n = subs.len() as u32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subs.iter().enumerate() {
            let take = per + u32::from((i as u32) < extra);
            let list = out.entry((*m).to_owned()).or_default();
            list.extend((next..next + take).map(|p| (topic.clone(), p)));
            next += take;
        }
    }
}

fn round_robin(
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
    out: &mut Assignment,
) {
    let mut ids: Vec<&MemberSubscription> = members.iter().collect();
    ids.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    if ids.is_empty() {
        return;
    }
    let mut turn = 0usize;
    for (topic, &count) in partitions {
        for p in 0..count {
            // The next member in turn that subscribes to the topic.
            for _ in 0..ids.len() {
                let m = ids[turn % ids.len()];
                turn += 1;
                if m.topics.contains(topic) {
                    out.entry(m.member_id.clone())
                        .or_default()
                        .push((topic.clone(), p));
                    break;
                }
            }
        }
    }
}

fn cooperative_sticky(
    members: &[MemberSubscription],
    partitions: &BTreeMap<String, u32>,
    out: &mut Assignment,
) {
    let exists = |(t, p): &TopicPartition| partitions.get(t).is_some_and(|&n| *p < n);
    // Current owners; when two members claim a partition, the newer generation wins.
    let mut owner: BTreeMap<TopicPartition, (&str, i32)> = BTreeMap::new();
    for m in members {
        for tp in &m.owned {
            if !exists(tp) || !m.topics.contains(&tp.0) {
                continue;
            }
            match owner.get(tp) {
                Some((_, g)) if *g >= m.generation => {}
                _ => {
                    owner.insert(tp.clone(), (m.member_id.as_str(), m.generation));
                }
            }
        }
    }
    let subs: BTreeMap<&str, &BTreeSet<String>> = members
        .iter()
        .map(|m| (m.member_id.as_str(), &m.topics))
        .collect();
    // Target: start from the current owners, then place the rest on the least loaded.
    let mut target: BTreeMap<&str, BTreeSet<TopicPartition>> =
        subs.keys().map(|m| (*m, BTreeSet::new())).collect();
    for (tp, (m, _)) in &owner {
        if let Some(set) = target.get_mut(m) {
            set.insert(tp.clone());
        }
    }
    for (topic, &count) in partitions {
        for p in 0..count {
            let tp = (topic.clone(), p);
            if owner.contains_key(&tp) {
                continue;
            }
            let least = target
                .iter()
                .filter(|(m, _)| subs[*m].contains(topic))
                .min_by_key(|(m, set)| (set.len(), **m))
                .map(|(m, _)| *m);
            if let Some(m) = least {
                target.get_mut(m).map(|s| s.insert(tp));
            }
        }
    }
    // Balance: move partitions from the most to the least loaded member that can take
    // them, until no move narrows the gap. Each move strictly lowers the sum of squared
    // loads, so this ends.
    loop {
        let mut moved = false;
        let mut order: Vec<&str> = target.keys().copied().collect();
        order.sort_by_key(|m| std::cmp::Reverse((target[m].len(), std::cmp::Reverse(*m))));
        'givers: for giver in order {
            let give_len = target[giver].len();
            let candidates: Vec<TopicPartition> = target[giver].iter().rev().cloned().collect();
            for tp in candidates {
                let taker = target
                    .iter()
                    .filter(|(m, set)| {
                        **m != giver && subs[*m].contains(&tp.0) && set.len() + 1 < give_len
                    })
                    .min_by_key(|(m, set)| (set.len(), **m))
                    .map(|(m, _)| *m);
                if let Some(taker) = taker {
                    target.get_mut(giver).map(|s| s.remove(&tp));
                    target.get_mut(taker).map(|s| s.insert(tp));
                    moved = true;
                    break 'givers;
                }
            }
        }
        if !moved {
            break;
        }
    }
    // Cooperative: a partition still owned by someone else is not handed over in this
    // generation; its owner sees it missing, revokes it and rejoins, and the next
    // rebalance gives it to its new owner.
    for (m, set) in target {
        let list = out.entry(m.to_owned()).or_default();
        for tp in set {
            match owner.get(&tp) {
                Some((o, _)) if *o != m => {}
                _ => list.push(tp),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn member(id: &str, topics: &[&str], owned: &[(&str, u32)]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            owned: owned.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect(),
            generation: 1,
        }
    }

    fn counts(a: &Assignment) -> Vec<usize> {
        a.values().map(Vec::len).collect()
    }

    #[test]
    fn range_gives_consecutive_blocks() {
        let members = [
            member("a", &["t"], &[]),
            member("b", &["t"], &[]),
            member("c", &["t"], &[]),
        ];
        let parts = BTreeMap::from([("t".to_owned(), 7)]);
        let a = assign(Strategy::Range, &members, &parts);
        let ps = |m: &str| a[m].iter().map(|(_, p)| *p).collect::<Vec<_>>();
        assert_eq!(ps("a"), [0, 1, 2]);
        assert_eq!(ps("b"), [3, 4]);
        assert_eq!(ps("c"), [5, 6]);
    }

    #[test]
    fn round_robin_deals_in_turn() {
        let members = [member("a", &["t", "u"], &[]), member("b", &["t", "u"], &[])];
        let parts = BTreeMap::from([("t".to_owned(), 3), ("u".to_owned(), 1)]);
        let a = assign(Strategy::RoundRobin, &members, &parts);
        assert_eq!(a["a"], [("t".to_owned(), 0), ("t".to_owned(), 2)]);
        assert_eq!(a["b"], [("t".to_owned(), 1), ("u".to_owned(), 0)]);
    }

    #[test]
    fn sticky_moves_only_what_the_newcomer_takes_and_withholds_it_once() {
        // Three members own two partitions each of six; a fourth joins.
        let owned = |ps: &[u32]| ps.iter().map(|p| ("t", *p)).collect::<Vec<_>>();
        let mut members = vec![
            member("a", &["t"], &owned(&[0, 1])),
            member("b", &["t"], &owned(&[2, 3])),
            member("c", &["t"], &owned(&[4, 5])),
            member("d", &["t"], &[]),
        ];
        let parts = BTreeMap::from([("t".to_owned(), 6)]);
        let first = assign(Strategy::CooperativeSticky, &members, &parts);
        // Nobody gets a partition someone else still owns; exactly one moves (2,2,2,0 →
        // 2,2,1,1 is the balanced target), so exactly one owner loses one.
        assert!(first["d"].is_empty(), "withheld until revoked: {first:?}");
        let kept: usize = ["a", "b", "c"].iter().map(|m| first[*m].len()).sum();
        assert_eq!(kept, 5);
        // The owner revokes; everyone rejoins with what they now own.
        for m in &mut members {
            m.owned = first[&m.member_id]
                .iter()
                .map(|(t, p)| (t.clone(), *p))
                .collect();
            m.generation = 2;
        }
        let second = assign(Strategy::CooperativeSticky, &members, &parts);
        assert_eq!(second["d"].len(), 1);
        for m in ["a", "b", "c"] {
            assert_eq!(second[m], first[m], "{m} keeps what it kept");
        }
    }

    proptest! {
        #[test]
        fn every_strategy_assigns_each_partition_once_and_balances(
            n_members in 1usize..8,
            counts_by_topic in proptest::collection::vec(0u32..12, 1..4),
        ) {
            let topics: Vec<String> = (0..counts_by_topic.len()).map(|i| format!("t{i}")).collect();
            let parts: BTreeMap<String, u32> = topics.iter().cloned().zip(counts_by_topic.iter().copied()).collect();
            let members: Vec<MemberSubscription> = (0..n_members)
                .map(|i| MemberSubscription {
                    member_id: format!("m{i}"),
                    topics: topics.iter().cloned().collect(),
                    owned: Vec::new(),
                    generation: 1,
                })
                .collect();
            let total: u32 = counts_by_topic.iter().sum();
            for s in [Strategy::Range, Strategy::RoundRobin, Strategy::CooperativeSticky] {
                let a = assign(s, &members, &parts);
                let mut seen = BTreeSet::new();
                for list in a.values() {
                    for tp in list {
                        prop_assert!(seen.insert(tp.clone()), "{:?} assigned twice by {:?}", tp, s);
                    }
                }
                prop_assert_eq!(seen.len() as u32, total);
                if s != Strategy::Range {
                    let c = counts(&a);
                    let (lo, hi) = (c.iter().min().copied().unwrap_or(0), c.iter().max().copied().unwrap_or(0));
                    prop_assert!(hi - lo <= 1, "{:?} unbalanced: {:?}", s, c);
                }
            }
        }

        #[test]
        fn sticky_never_hands_over_a_partition_someone_else_still_owns(
            n_members in 2usize..6,
            count in 1u32..20,
            seed in any::<u64>(),
        ) {
            let parts = BTreeMap::from([("t".to_owned(), count)]);
            // A random current ownership (some partitions unowned), then one member leaves
            // and one joins.
            let mut members: Vec<MemberSubscription> = (0..n_members)
                .map(|i| member(&format!("m{i}"), &["t"], &[]))
                .collect();
            for p in 0..count {
                let k = (seed.rotate_left(p) as usize) % (n_members + 1);
                if k < n_members {
                    members[k].owned.push(("t".to_owned(), p));
                }
            }
            members.remove(0);
            members.push(member("new", &["t"], &[]));
            let a = assign(Strategy::CooperativeSticky, &members, &parts);
            for m in &members {
                for tp in &a[&m.member_id] {
                    let other_owner = members.iter().any(|o| o.member_id != m.member_id && o.owned.contains(tp));
                    prop_assert!(!other_owner, "{:?} given to {} while owned by another", tp, m.member_id);
                }
            }
        }
    }
}
