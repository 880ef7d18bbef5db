//! The Merkle tree over a decision log (RFC 9162 §2.1): its root hash, kept
//! incrementally by the writer and recomputed by the verifier, and inclusion
//! and consistency proofs with their verification.
//!
//! A leaf is a record's chain hash (32 bytes): it already commits to the
//! record's canonical JSON and to everything before it, and zt server stores
//! it beside each shipped record, so either side can rebuild the tree.

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A leaf from a record's hash as logged and stored (64 hex digits); `None`
/// if it is not one.
pub fn leaf_from_hex(hex: &str) -> Option<Hash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    };
    let mut leaf = [0u8; 32];
    for (out, pair) in leaf.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(leaf)
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(context.finish().as_ref());
    hash
}

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    sha256(&[&[0x00], leaf])
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The right edge of a tree being grown leaf by leaf: the roots of its
/// perfect subtrees, largest first — O(log n) hashes for n leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (leaves in the subtree, its root), sizes strictly decreasing powers of two.
    subtrees: Vec<(u64, Hash)>,
}

impl Frontier {
    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds a leaf (its data, hashed here).
    pub fn push(&mut self, leaf: &[u8]) {
        let mut subtree = (1u64, leaf_hash(leaf));
        while let Some(&(size, left)) = self.subtrees.last() {
            if size != subtree.0 {
                break;
            }
            self.subtrees.pop();
            subtree = (size * 2, node_hash(&left, &subtree.1));
        }
        self.subtrees.push(subtree);
        self.size += 1;
    }

    /// The tree's root hash (MTH): the subtrees folded from the right, which is
    /// RFC 9162's split at the largest power of two below the size.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(&(_, mut root)) = subtrees.next() else {
            return empty_root();
        };
        for (_, left) in subtrees {
            root = node_hash(left, &root);
        }
        root
    }
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH over leaf hashes already computed.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Why a proof cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index is not in the tree.
    #[error("leaf {index} is not in a tree of {size}")]
    NoSuchLeaf {
        /// 0-based.
        index: u64,
        /// Leaves in the tree.
        size: u64,
    },
    /// The older tree is not smaller than or equal to the newer one.
    #[error("a tree of {old} cannot be a prefix of a tree of {new}")]
    Sizes {
        /// Older size.
        old: u64,
        /// Newer size.
        new: u64,
    },
}

/// The audit path of leaf `index` (RFC 9162 §2.1.3.1), from the leaf up.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    let Some(m) = usize::try_from(index).ok().filter(|&m| m < leaves.len()) else {
        return Err(ProofError::NoSuchLeaf { index, size });
    };
    let mut proof = Vec::new();
    path(m, leaves, &mut proof);
    Ok(proof)
}

fn path(m: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if m < k {
        path(m, &leaves[..k], proof);
        proof.push(root_of(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], proof);
        proof.push(root_of(&leaves[..k]));
    }
}

/// The consistency proof from the tree of the first `old` leaves to the tree
/// of all of them (RFC 9162 §2.1.4.1).
pub fn consistency_proof(old: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let new = leaves.len() as u64;
    let Some(m) = usize::try_from(old).ok().filter(|&m| m <= leaves.len()) else {
        return Err(ProofError::Sizes { old, new });
    };
    let mut proof = Vec::new();
    if m > 0 {
        subproof(m, leaves, true, &mut proof);
    }
    Ok(proof)
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, proof: &mut Vec<Hash>) {
    if m == leaves.len() {
        if !whole {
            proof.push(root_of(leaves));
        }
        return;
    }
    let k = split(leaves.len());
    if m <= k {
        subproof(m, &leaves[..k], whole, proof);
        proof.push(root_of(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root_of(&leaves[..k]));
    }
}

/// Checks that `leaf` (a leaf hash) is leaf `index` of the tree of `size`
/// leaves with root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        // Every tree extends the empty one; there is nothing to prove.
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    fn hex(hash: &Hash) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The reference roots of the RFC 6962 test data used by Certificate
    /// Transparency implementations, for the first 1 to 8 of these leaves.
    #[test]
    fn known_roots_from_the_reference_test_data() {
        let data: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e,
                0x6f,
            ],
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut frontier = Frontier::default();
        let mut hashes = Vec::new();
        for (leaf, root) in data.iter().zip(roots) {
            frontier.push(leaf);
            hashes.push(leaf_hash(leaf));
            assert_eq!(hex(&frontier.root()), root, "size {}", frontier.size());
            assert_eq!(hex(&root_of(&hashes)), root);
        }
    }

    proptest! {
        #[test]
        fn the_frontier_agrees_with_the_recursive_definition(n in 0usize..300) {
            let mut frontier = Frontier::default();
            for i in 0..n {
                frontier.push(&(i as u64).to_be_bytes());
            }
            prop_assert_eq!(frontier.root(), root_of(&leaves(n)));
        }

        #[test]
        fn inclusion_proofs_verify_and_bind_the_leaf(size in 1usize..130, pick in any::<prop::sample::Index>()) {
            let all = leaves(size);
            let index = pick.index(size);
            let root = root_of(&all);
            let proof = inclusion_proof(index as u64, &all).unwrap();
            prop_assert!(verify_inclusion(index as u64, size as u64, &all[index], &proof, &root));
            // Another leaf, index, size or root: refused.
            let other = leaf_hash(b"other");
            prop_assert!(!verify_inclusion(index as u64, size as u64, &other, &proof, &root));
            if size > 1 {
                let moved = (index + 1) % size;
                prop_assert!(!verify_inclusion(moved as u64, size as u64, &all[index], &proof, &root));
            }
            prop_assert!(!verify_inclusion(index as u64, size as u64, &all[index], &proof, &other));
        }

        #[test]
        fn consistency_proofs_verify_and_refuse_a_changed_history(
            new in 1usize..130,
            pick in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let all = leaves(new);
            let old = pick.index(new + 1);
            let old_root = root_of(&all[..old]);
            let new_root = root_of(&all);
            let proof = consistency_proof(old as u64, &all).unwrap();
            prop_assert!(verify_consistency(old as u64, new as u64, &old_root, &new_root, &proof));
            // A history where one of the old leaves differs is not consistent.
            if old > 0 {
                let mut forged = all.clone();
                forged[flip.index(old)] = leaf_hash(b"forged");
                let forged_root = root_of(&forged[..old]);
                prop_assert!(!verify_consistency(old as u64, new as u64, &forged_root, &new_root, &proof));
                // And the grown tree of that other history does not extend the true one.
                let forged_new = root_of(&forged);
                let forged_proof = consistency_proof(old as u64, &forged).unwrap();
                prop_assert!(!verify_consistency(old as u64, new as u64, &old_root, &forged_new, &forged_proof));
            }
            prop_assert!(!verify_consistency(new as u64 + 1, new as u64, &old_root, &new_root, &proof));
        }
    }

    #[test]
    fn proofs_of_what_is_not_there_are_refused() {
        let all = leaves(5);
        assert_eq!(
            inclusion_proof(5, &all).unwrap_err().to_string(),
            "leaf 5 is not in a tree of 5"
        );
        assert!(consistency_proof(6, &all).is_err());
        assert!(!verify_inclusion(0, 0, &all[0], &[], &empty_root()));
    }
}
