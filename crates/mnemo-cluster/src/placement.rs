//! Placement: which shard holds a piece of data, and which node should own each shard.
//! Pure functions; every node computes the same answers.

use sha2::{Digest, Sha256};

/// The largest number of shards a cluster may have (shard numbers must fit the 4 hex
/// characters of an [`id_tag`]).
pub const MAX_SHARDS: u32 = 65536;

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The shard of a tenant's data: a user's data (`Some(user)`) or the tenant's shared data
/// (`None`). SHA-256 over `tenant`, a 0 byte and the user (for `None`: `tenant` and a 1
/// byte); the first 8 bytes big-endian, modulo `shards`. Returns 0 if `shards` is 0.
pub fn shard_of(shards: u32, tenant: &str, user: Option<&str>) -> u32 {
    if shards == 0 {
        return 0;
    }
    let h = match user {
        Some(u) => hash64(&[tenant.as_bytes(), &[0], u.as_bytes()]),
        None => hash64(&[tenant.as_bytes(), &[1]]),
    };
    (h % u64::from(shards)) as u32
}

/// The shards a caller can see data on: every shard for a tenant-wide caller; for a caller
/// acting for one user, the user's shard first, then the tenant's (its shared memory), or
/// the one shard when they are the same.
pub fn visible_shards(shards: u32, tenant: &str, user: Option<&str>) -> Vec<u32> {
    let home = shard_of(shards, tenant, user);
    let tenant_shard = shard_of(shards, tenant, None);
    match user {
        Some(_) if home == tenant_shard => vec![home],
        Some(_) => vec![home, tenant_shard],
        None => (0..shards).collect(),
    }
}

/// The shard of a memory key: keys `users/<u>/...` belong to user `<u>`
/// (`shard_of(tenant, Some(u))`); every other key (including `users/<u>` without a second
/// `/`, and an empty `<u>`) to the tenant's shared shard.
pub fn shard_of_key(shards: u32, tenant: &str, key: &str) -> u32 {
    let user = key
        .strip_prefix("users/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(u, _)| u)
        .filter(|u| !u.is_empty());
    shard_of(shards, tenant, user)
}

/// The 4 lowercase hex characters that end an ID created on `shard`.
pub fn id_tag(shard: u32) -> String {
    format!("{shard:04x}")
}

/// The shard an ID was created on: its last 4 characters as lowercase hex. `None` if they
/// are not 4 lowercase hex characters or if the value is not below `shards`.
pub fn shard_of_id(shards: u32, id: &str) -> Option<u32> {
    let b = id.as_bytes();
    if b.len() < 4 {
        return None;
    }
    let mut v: u32 = 0;
    for &c in &b[b.len() - 4..] {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = v * 16 + u32::from(d);
    }
    (v < shards).then_some(v)
}

/// The rendezvous score of `node` for `shard`: the higher, the more the node wants it.
fn score(node: &str, shard: u32) -> u64 {
    hash64(&[node.as_bytes(), &[0], &shard.to_be_bytes()])
}

/// Which node each shard should be on: `plan(..)[shard]` is an index into `nodes`.
///
/// Rendezvous hashing (highest score of (node, shard) wins), capped for balance: shards
/// are assigned in order and a shard falls to the next-best node when the best one is
/// full. Each node gets `shards / n` or `shards / n + 1` shards. The answer depends only
/// on the set of node names, not their order (ties are broken by name). Returns an empty
/// plan if `nodes` is empty.
pub fn plan(shards: u32, nodes: &[String]) -> Vec<usize> {
    let n = nodes.len();
    if n == 0 {
        return Vec::new();
    }
    let base = shards as usize / n;
    let extra = shards as usize % n;
    let mut counts = vec![0usize; n];
    let mut at_extra = 0usize;
    let mut out = Vec::with_capacity(shards as usize);
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(n);
    for shard in 0..shards {
        ranked.clear();
        ranked.extend(
            nodes
                .iter()
                .enumerate()
                .map(|(i, id)| (score(id, shard), i)),
        );
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| nodes[a.1].cmp(&nodes[b.1])));
        let chosen = ranked
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| counts[i] < base || (counts[i] == base && at_extra < extra))
            // Unreachable: total capacity is exactly `shards`. Fall back to the best node.
            .unwrap_or(ranked[0].1);
        if counts[chosen] == base {
            at_extra += 1;
        }
        counts[chosen] += 1;
        out.push(chosen);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn counts(p: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in p {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn shard_of_is_stable_and_in_range() {
        for shards in [1, 7, 64, MAX_SHARDS] {
            for t in ["acme", "globex", ""] {
                for u in [None, Some("alice"), Some("bob"), Some("")] {
                    let s = shard_of(shards, t, u);
                    assert!(s < shards);
                    assert_eq!(s, shard_of(shards, t, u));
                }
            }
        }
        assert_eq!(shard_of(0, "t", None), 0);
        // User data spreads over shards.
        let distinct: std::collections::HashSet<u32> = (0..200)
            .map(|i| shard_of(64, "acme", Some(&format!("u{i}"))))
            .collect();
        assert!(distinct.len() > 50, "{}", distinct.len());
    }

    #[test]
    fn shard_of_known_value() {
        // SHA-256("acme\0alice") and SHA-256("acme\x01"), first 8 bytes big-endian.
        let expect = |data: &[u8]| {
            let d = Sha256::digest(data);
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        };
        assert_eq!(
            u64::from(shard_of(MAX_SHARDS, "acme", Some("alice"))),
            expect(b"acme\0alice") % u64::from(MAX_SHARDS)
        );
        assert_eq!(
            u64::from(shard_of(1000, "acme", None)),
            expect(b"acme\x01") % 1000
        );
    }

    #[test]
    fn none_differs_from_users() {
        // With many shards the shared shard should differ from most users' shards.
        let shared = shard_of(MAX_SHARDS, "acme", None);
        assert_ne!(shared, shard_of(MAX_SHARDS, "acme", Some("")));
        assert_ne!(shared, shard_of(MAX_SHARDS, "acme", Some("\u{1}")));
    }

    #[test]
    fn shard_of_key_routes_user_keys() {
        let s = 64;
        assert_eq!(
            shard_of_key(s, "t", "users/alice/prefs"),
            shard_of(s, "t", Some("alice"))
        );
        assert_eq!(
            shard_of_key(s, "t", "users/alice/a/b/c"),
            shard_of(s, "t", Some("alice"))
        );
        assert_eq!(shard_of_key(s, "t", "users/alice"), shard_of(s, "t", None));
        assert_eq!(shard_of_key(s, "t", "users//x"), shard_of(s, "t", None));
        assert_eq!(shard_of_key(s, "t", "team/notes"), shard_of(s, "t", None));
        assert_eq!(
            shard_of_key(s, "t", "xusers/alice/p"),
            shard_of(s, "t", None)
        );
    }

    #[test]
    fn id_tags_round_trip() {
        assert_eq!(id_tag(0), "0000");
        assert_eq!(id_tag(7), "0007");
        assert_eq!(id_tag(0xbeef), "beef");
        assert_eq!(id_tag(MAX_SHARDS - 1), "ffff");
        for s in [0, 1, 63] {
            assert_eq!(shard_of_id(64, &format!("msg_abc{}", id_tag(s))), Some(s));
        }
        assert_eq!(shard_of_id(64, "abc0040"), None); // 64 >= shards
        assert_eq!(shard_of_id(MAX_SHARDS, "xffff"), Some(0xffff));
        assert_eq!(shard_of_id(64, "x00A0"), None); // uppercase
        assert_eq!(shard_of_id(64, "x00g0"), None);
        assert_eq!(shard_of_id(64, "001"), None);
        assert_eq!(shard_of_id(64, "0001"), Some(1));
        assert_eq!(shard_of_id(64, "é001"), None);
        assert_eq!(shard_of_id(64, "ab\u{e9}1"), None);
    }

    #[test]
    fn plan_is_balanced() {
        for shards in [1u32, 7, 8, 63, 64, 100, 1000] {
            for n in 1..=7 {
                let nodes = names(n);
                let p = plan(shards, &nodes);
                assert_eq!(p.len(), shards as usize);
                let c = counts(&p, n);
                let max = *c.iter().max().unwrap();
                let min = *c.iter().min().unwrap();
                assert!(max - min <= 1, "shards={shards} n={n} counts={c:?}");
                assert_eq!(c.iter().sum::<usize>(), shards as usize);
            }
        }
        assert!(plan(8, &[]).is_empty());
    }

    #[test]
    fn plan_ignores_node_order() {
        let nodes = names(5);
        let mut rev = nodes.clone();
        rev.reverse();
        let a: Vec<&String> = plan(64, &nodes).iter().map(|&i| &nodes[i]).collect();
        let b: Vec<&String> = plan(64, &rev).iter().map(|&i| &rev[i]).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn plan_is_stable_when_a_node_joins() {
        for shards in [64u32, 256, 1024] {
            let three = names(3);
            let four = names(4);
            let p3: Vec<&String> = plan(shards, &three).iter().map(|&i| &three[i]).collect();
            let p4: Vec<&String> = plan(shards, &four).iter().map(|&i| &four[i]).collect();
            let moved = p3.iter().zip(&p4).filter(|(a, b)| a != b).count();
            let quarter = shards as usize / 4;
            // At least the new node's share moves; not much more than that.
            eprintln!("shards={shards}: {moved} moved");
            assert!(moved >= quarter, "shards={shards} moved={moved}");
            assert!(
                moved <= quarter + quarter / 2,
                "shards={shards} moved={moved} (a quarter is {quarter})"
            );
            // The new node gets its share, all of it taken from the others.
            let to_new = p4.iter().filter(|b| b.as_str() == "n4").count();
            assert!(
                to_new == quarter || to_new == quarter + 1,
                "to_new={to_new}"
            );
        }
    }

    #[test]
    fn plan_is_stable_when_a_node_leaves() {
        let shards = 64u32;
        let four = names(4);
        let three = names(3);
        let p4: Vec<&String> = plan(shards, &four).iter().map(|&i| &four[i]).collect();
        let p3: Vec<&String> = plan(shards, &three).iter().map(|&i| &three[i]).collect();
        // Shards of the remaining nodes mostly stay put.
        let kept = p4
            .iter()
            .zip(&p3)
            .filter(|(a, b)| a.as_str() != "n4" && a == b)
            .count();
        let on_remaining = p4.iter().filter(|a| a.as_str() != "n4").count();
        assert!(kept * 10 >= on_remaining * 8, "kept={kept}/{on_remaining}");
    }
}
