//! Flattened device tree blob -> an in-memory tree of nodes and properties.
//!
//! Written here rather than using the `fdt` crate because that crate panics
//! (`expect`, `assert!`, unchecked slicing) on malformed blobs, and the boot
//! DTB is input we must survive whatever it contains. Every read below is
//! bounds-checked; a bad blob yields a [`BlobError`] that says where.

use alloc::vec::Vec;

use crate::Region;

/// Why a blob is not a usable flattened device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BlobError {
    /// Shorter than the header it claims to have.
    TooShort { len: usize },
    /// The first word is not 0xd00dfeed.
    BadMagic(u32),
    /// `totalsize` is larger than the bytes we were given (or smaller than the header).
    BadTotalSize { totalsize: u32, available: usize },
    /// Only versions 16 and 17 (inline node names) are understood.
    UnsupportedVersion { version: u32, last_compatible: u32 },
    /// A block (`"structure"`, `"strings"`, `"memory reservation map"`) lies
    /// outside `totalsize` or is misaligned.
    BlockOutOfBounds(&'static str),
    /// An unknown token in the structure block, at this byte offset of the block.
    BadToken { offset: usize, token: u32 },
    /// The structure block ended in the middle of a node or property.
    Truncated { offset: usize },
    /// A node or property name is not NUL-terminated UTF-8 inside its block.
    BadName { offset: usize },
    /// A property appeared outside of any node, or a second root node.
    Misplaced { offset: usize },
    /// Nodes nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An END_NODE without a matching BEGIN_NODE.
    UnbalancedEnd { offset: usize },
    /// The structure block has no root node.
    NoRoot,
}

impl core::fmt::Display for BlobError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "only {len} bytes, shorter than an FDT header"),
            Self::BadMagic(magic) => write!(f, "bad magic {magic:#010x} (expected 0xd00dfeed)"),
            Self::BadTotalSize {
                totalsize,
                available,
            } => {
                write!(
                    f,
                    "header totalsize {totalsize} but {available} bytes available"
                )
            }
            Self::UnsupportedVersion {
                version,
                last_compatible,
            } => write!(
                f,
                "unsupported FDT version {version} (last compatible {last_compatible}); need 16 or 17"
            ),
            Self::BlockOutOfBounds(block) => write!(f, "{block} block out of bounds or misaligned"),
            Self::BadToken { offset, token } => {
                write!(
                    f,
                    "unknown token {token:#x} at structure offset {offset:#x}"
                )
            }
            Self::Truncated { offset } => {
                write!(f, "structure block truncated at offset {offset:#x}")
            }
            Self::BadName { offset } => {
                write!(f, "name at offset {offset:#x} is not NUL-terminated UTF-8")
            }
            Self::Misplaced { offset } => {
                write!(
                    f,
                    "property or node outside the root node at offset {offset:#x}"
                )
            }
            Self::TooDeep => write!(f, "nodes nested deeper than {MAX_DEPTH}"),
            Self::UnbalancedEnd { offset } => {
                write!(f, "END_NODE without BEGIN_NODE at offset {offset:#x}")
            }
            Self::NoRoot => write!(f, "structure block has no root node"),
        }
    }
}

/// Nesting limit, as libfdt's FDT_MAX_DEPTH: real trees are under 10 deep.
pub const MAX_DEPTH: usize = 64;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// Index of a node in [`Tree::nodes`]; the root is 0.
pub type NodeId = usize;

#[derive(Clone, Debug)]
pub struct Prop<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

#[derive(Clone, Debug)]
pub struct Node<'a> {
    /// Full node name including any unit address (`pl011@9000000`); "" for the root.
    pub name: &'a str,
    pub parent: Option<NodeId>,
    pub props: Vec<Prop<'a>>,
    pub children: Vec<NodeId>,
}

impl<'a> Node<'a> {
    pub fn prop(&self, name: &str) -> Option<&'a [u8]> {
        self.props.iter().find(|p| p.name == name).map(|p| p.value)
    }
    /// Name without the unit address (`pl011` for `pl011@9000000`).
    pub fn base_name(&self) -> &'a str {
        self.name.split('@').next().unwrap_or(self.name)
    }
}

/// The whole device tree, nodes in blob order (parents before children).
#[derive(Clone, Debug)]
pub struct Tree<'a> {
    pub nodes: Vec<Node<'a>>,
    /// `/memreserve/` entries from the header's reservation map.
    pub memreserve: Vec<Region>,
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let word: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

fn be64(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let word: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(word))
}

/// The NUL-terminated UTF-8 string starting at `offset` of `bytes`.
fn cstr(bytes: &[u8], offset: usize) -> Option<&str> {
    let tail = bytes.get(offset..)?;
    let len = tail.iter().position(|&b| b == 0)?;
    core::str::from_utf8(tail.get(..len)?).ok()
}

fn align4(offset: usize) -> Option<usize> {
    offset.checked_add(3).map(|o| o & !3)
}

/// `[offset, offset + size)` of `blob`, if it lies inside.
fn block<'a>(
    blob: &'a [u8],
    offset: u32,
    size: u32,
    what: &'static str,
) -> Result<&'a [u8], BlobError> {
    let start = offset as usize;
    let end = start
        .checked_add(size as usize)
        .ok_or(BlobError::BlockOutOfBounds(what))?;
    blob.get(start..end)
        .ok_or(BlobError::BlockOutOfBounds(what))
}

impl<'a> Tree<'a> {
    /// Validate the header and build the tree. Never panics.
    pub fn parse(blob: &'a [u8]) -> Result<Tree<'a>, BlobError> {
        let header_word = |index: usize| be32(blob, index.wrapping_mul(4));
        let too_short = BlobError::TooShort { len: blob.len() };
        let magic = header_word(0).ok_or(too_short)?;
        if magic != FDT_MAGIC {
            return Err(BlobError::BadMagic(magic));
        }
        let version = header_word(5).ok_or(too_short)?;
        let last_compatible = header_word(6).ok_or(too_short)?;
        // Later versions stay readable by a v17 reader if they say so.
        let readable = version >= 16 && (version <= 17 || last_compatible <= 17);
        if !readable {
            return Err(BlobError::UnsupportedVersion {
                version,
                last_compatible,
            });
        }
        // Version 17 added size_dt_struct (the tenth word); 16 stops after size_dt_strings.
        let header_len: usize = if version >= 17 { 40 } else { 36 };
        if blob.len() < header_len {
            return Err(too_short);
        }
        let totalsize = header_word(1).ok_or(too_short)?;
        if (totalsize as usize) < header_len || totalsize as usize > blob.len() {
            return Err(BlobError::BadTotalSize {
                totalsize,
                available: blob.len(),
            });
        }
        let blob = blob.get(..totalsize as usize).ok_or(too_short)?;
        let off_struct = header_word(2).ok_or(too_short)?;
        let off_strings = header_word(3).ok_or(too_short)?;
        let off_rsvmap = header_word(4).ok_or(too_short)?;
        let size_strings = header_word(8).ok_or(too_short)?;
        let size_struct = if version >= 17 {
            header_word(9).ok_or(too_short)?
        } else {
            totalsize.saturating_sub(off_struct)
        };
        if off_struct % 4 != 0 {
            return Err(BlobError::BlockOutOfBounds("structure"));
        }
        let structure = block(blob, off_struct, size_struct, "structure")?;
        let strings = block(blob, off_strings, size_strings, "strings")?;
        if off_rsvmap % 8 != 0 {
            return Err(BlobError::BlockOutOfBounds("memory reservation map"));
        }
        let memreserve = parse_memreserve(blob, off_rsvmap as usize)?;
        let nodes = parse_structure(structure, strings)?;
        Ok(Tree { nodes, memreserve })
    }

    pub fn root(&self) -> NodeId {
        0
    }

    pub fn node(&self, id: NodeId) -> Option<&Node<'a>> {
        self.nodes.get(id)
    }
}

fn parse_memreserve(blob: &[u8], start: usize) -> Result<Vec<Region>, BlobError> {
    let mut regions = Vec::new();
    let mut offset = start;
    loop {
        let (Some(base), Some(size)) = (be64(blob, offset), be64(blob, offset.wrapping_add(8)))
        else {
            return Err(BlobError::BlockOutOfBounds("memory reservation map"));
        };
        if base == 0 && size == 0 {
            return Ok(regions);
        }
        if size != 0 {
            regions.push(Region::new(base, size));
        }
        offset = offset
            .checked_add(16)
            .ok_or(BlobError::BlockOutOfBounds("memory reservation map"))?;
    }
}

fn parse_structure<'a>(structure: &'a [u8], strings: &'a [u8]) -> Result<Vec<Node<'a>>, BlobError> {
    let mut nodes: Vec<Node<'a>> = Vec::new();
    // Path from the root to the node being filled in.
    let mut open: Vec<NodeId> = Vec::new();
    let mut offset = 0usize;
    loop {
        let token = be32(structure, offset).ok_or(BlobError::Truncated { offset })?;
        let token_offset = offset;
        offset = offset
            .checked_add(4)
            .ok_or(BlobError::Truncated { offset })?;
        match token {
            FDT_BEGIN_NODE => {
                let name = cstr(structure, offset).ok_or(BlobError::BadName { offset })?;
                let parent = open.last().copied();
                if parent.is_none() && !nodes.is_empty() {
                    return Err(BlobError::Misplaced {
                        offset: token_offset,
                    });
                }
                if open.len() >= MAX_DEPTH {
                    return Err(BlobError::TooDeep);
                }
                let id = nodes.len();
                if let Some(parent_node) = parent.and_then(|p| nodes.get_mut(p)) {
                    parent_node.children.push(id);
                }
                nodes.push(Node {
                    name,
                    parent,
                    props: Vec::new(),
                    children: Vec::new(),
                });
                open.push(id);
                offset = offset
                    .checked_add(name.len().wrapping_add(1))
                    .and_then(align4)
                    .ok_or(BlobError::Truncated { offset })?;
            }
            FDT_END_NODE => {
                if open.pop().is_none() {
                    return Err(BlobError::UnbalancedEnd {
                        offset: token_offset,
                    });
                }
            }
            FDT_PROP => {
                let len = be32(structure, offset).ok_or(BlobError::Truncated { offset })? as usize;
                let name_offset = be32(structure, offset.wrapping_add(4))
                    .ok_or(BlobError::Truncated { offset })?
                    as usize;
                let value_start = offset
                    .checked_add(8)
                    .ok_or(BlobError::Truncated { offset })?;
                let value_end = value_start
                    .checked_add(len)
                    .ok_or(BlobError::Truncated { offset })?;
                let value = structure
                    .get(value_start..value_end)
                    .ok_or(BlobError::Truncated { offset })?;
                let name = cstr(strings, name_offset).ok_or(BlobError::BadName { offset })?;
                let node =
                    open.last()
                        .and_then(|&id| nodes.get_mut(id))
                        .ok_or(BlobError::Misplaced {
                            offset: token_offset,
                        })?;
                node.props.push(Prop { name, value });
                offset = align4(value_end).ok_or(BlobError::Truncated { offset })?;
            }
            FDT_NOP => {}
            FDT_END => {
                if !open.is_empty() {
                    // The block ends while nodes are still open.
                    return Err(BlobError::Truncated {
                        offset: token_offset,
                    });
                }
                break;
            }
            _ => {
                return Err(BlobError::BadToken {
                    offset: token_offset,
                    token,
                });
            }
        }
    }
    if nodes.is_empty() {
        return Err(BlobError::NoRoot);
    }
    Ok(nodes)
}
