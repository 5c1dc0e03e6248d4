/*
 * btree.c: an in-memory B+tree from byte-comparable keys to row ids.
 *
 * The tree never copies a key. Every entry is 16 bytes, two words:
 *
 *   hint   the first 8 key bytes as a big-endian integer, zero-padded, so
 *          that comparing hints as integers is memcmp of the first 8 bytes
 *   meta   bits 0-47 the rowid, bits 48-55 zero, bits 56-63 the key length
 *          clamped to 255
 *
 * Comparing a probe key with an entry: unequal hints decide. With equal
 * hints, if either key is at most 8 bytes long it is wholly inside the hint,
 * so it is a prefix of the other and the lengths decide ("ab" < "ab\0", both
 * with one hint). Only when both keys are longer than 8 bytes does the tree
 * ask fm_key_fn for the entry's full key, into a scratch buffer, and memcmp
 * from byte 8 on. Integer keys of a few columns fit in 8 bytes and never call
 * back. Entries are ordered by key, then rowid.
 *
 * Nodes are single allocations of at most 2040 bytes (a 2 KiB glibc chunk):
 *
 *   leaf   n, level 0, prev, next, then up to 126 entries (2040 bytes)
 *   inner  n, level > 0, then 84 keys (16 bytes each) and 84 child pointers
 *
 * Leaves are doubly linked in key order; the tree keeps the first and last
 * leaf. An inner node holds no separators of its own: key[i] is a copy of the
 * smallest entry under child[i]. So every key in an inner node is an entry
 * present in a leaf, and a comparison against it may call fm_key_fn, which
 * is only valid for rows in the tree. Removing the smallest entry of a leaf
 * rewrites the copy in its parent, and in each ancestor for which it was the
 * smallest too. Moving children between inner siblings needs no rotation
 * through the parent: the keys travel with their children.
 *
 * Invariants, all checked by fm_btree_check:
 *   - every leaf is at depth height - 1; node->level is its height above
 *     the leaves;
 *   - entries strictly increase along the leaf chain (keys strictly in a
 *     unique tree); hint and clamped length match the callback's key;
 *   - inner key[i] equals the first entry of the leftmost leaf under
 *     child[i], bit for bit (same rowid, so that row is in the tree);
 *   - a node that is neither the root nor the last of its level is at least
 *     half full; the last node of a level holds at least one entry (it may
 *     be nearly empty after an append or an ascending insert split it); an
 *     inner root has at least two children; an empty tree has no nodes.
 *
 * Insert descends once, recording the path, and adds the entry to its leaf.
 * A full node given one more slot (an entry, or a child with its key)
 * overflows B*-tree style, to keep random inserts from leaving nodes about
 * ln 2 = 69% full:
 *
 *   1. The last node of its level, given a slot past its end, is left full
 *      and a new node takes the slot alone (SQLite's balance_quick), so
 *      ascending inserts and fm_btree_append leave full nodes.
 *   2. Otherwise, if a sibling (a neighbour under the same parent) has
 *      room, the node and the roomier sibling share their slots evenly,
 *      and the parent's copy of the right one's smallest entry is updated.
 *      No node is allocated and the parent does not change shape.
 *   3. Otherwise the node and a full sibling, the right one if there is
 *      one, share their slots three ways with a new node placed just after
 *      the node; each ends about two thirds full. A node with no sibling
 *      (the root, or an only child at the end of its level) splits in two.
 *
 * Cases 1 and 3 give the parent a child, which may overflow in turn; the
 * new node is always placed just after the node on the path, so the
 * parent's slot goes at path->idx + 1 whichever case applied. Slots are
 * dealt out through a stack buffer large enough for two full nodes and the
 * new slot. The choice at each level depends only on the fill of the node
 * and its siblings, which work at lower levels does not change, so before
 * anything is modified insert walks up the path with the same choice,
 * counts the nodes cases 1 and 3 will need, and allocates them all; if one
 * allocation fails it frees the others and returns FM_ERR_NOMEM with the
 * tree untouched. Random inserts end about 87% full (18.5 bytes per entry
 * against 23.7 with plain halving splits). The scratch buffer is grown in
 * insert and append to the longest key ever added (rows keep their key
 * while indexed), so find, remove and iteration never allocate and cannot
 * fail.
 *
 * Remove takes the entry out of its leaf. A node under half full (or the last
 * of its level once empty) merges with a sibling under the same parent when
 * both fit in one node, and otherwise evens out with it; a merge takes a
 * child from the parent, which is then fixed the same way. An inner root
 * left with one child is replaced by it. Freed nodes go back to malloc.
 *
 * Iterators find both ends of the range at init, two O(log n) descents, and
 * then walk the leaf chain with no comparisons until the far end.
 *
 * Node memory. Nodes are malloc'd one by one, except after
 * fm_btree_reserve, which maps one populated block (fm_map_populated) with
 * room for the nodes of a given number of entries, for the bulk build of
 * recovery: on the virtual machines measured, malloc growing its heap and
 * the first touch of each fresh page (12-17 us per 4 KiB) were a quarter of
 * building a 10M-entry tree. Nodes come from the free list of freed block
 * slots first, then from the block, then from malloc; a freed node goes
 * back to the free list if it lies in the block, to free() otherwise. The
 * block is unmapped with the tree. When malloc fails and the tree has an
 * open fm_btree_pool (the engine opens its own only while it rolls a
 * transaction back), the node comes from the pool: malloc'd nodes kept
 * for that moment, freed like any other.
 *
 * Not done here: concurrency (the engine serialises access), prefix
 * compression, and keys that change while their row is indexed.
 */
#include "index/btree.h"

#include <string.h>

enum {
    HINT_BYTES = 8,
    LEAF_CAP = 126,
    LEAF_MIN = LEAF_CAP / 2,
    INNER_CAP = 84,
    INNER_MIN = INNER_CAP / 2,
    MAX_HEIGHT = 32,
    NODE_BYTES_MAX = 2040,
    NODE_SLOT = 2048, /* bytes of a node in a reserved block */
    SCRATCH_MIN = 64,
};

#define META_LEN_SHIFT  56
#define META_LEN_MAX    255u
#define META_ROWID_MASK (FM_BTREE_ROWID_MAX - 1)

/* Probe ranks: rowid + 1, or below / above every rowid of an equal key. */
#define RANK_BELOW ((uint64_t)0)
#define RANK_ABOVE UINT64_MAX

struct entry {
    uint64_t hint; /* first 8 key bytes, big-endian, zero-padded */
    uint64_t meta; /* rowid, and min(key_len, 255) << 56 */
};

struct node {
    uint16_t n;     /* entries (leaf) or children (inner) in use */
    uint16_t level; /* 0 for a leaf, 1 + the children's level otherwise */
    uint32_t unused;
};

struct leaf {
    struct node hdr;
    struct leaf *prev; /* previous leaf in key order, NULL for the first */
    struct leaf *next; /* next leaf in key order, NULL for the last */
    struct entry e[LEAF_CAP];
};

struct inner {
    struct node hdr;
    struct entry key[INNER_CAP]; /* key[i]: smallest entry under child[i] */
    struct node *child[INNER_CAP];
};

_Static_assert(sizeof(struct entry) == 16, "entries are two words");
_Static_assert(sizeof(struct leaf) <= NODE_BYTES_MAX, "leaf fits 2 KiB");
_Static_assert(sizeof(struct inner) <= NODE_BYTES_MAX, "inner fits 2 KiB");

struct fm_btree {
    struct node *root;  /* NULL when the tree is empty */
    struct leaf *head;  /* first leaf, NULL when empty */
    struct leaf *tail;  /* last leaf, NULL when empty */
    size_t height;      /* levels, 1 when the root is a leaf, 0 when empty */
    size_t count;       /* entries */
    size_t n_leaves;    /* allocated leaves */
    size_t n_inners;    /* allocated inner nodes */
    fm_key_fn key_fn;   /* fetches the key of a row held in the tree */
    void *key_ctx;      /* passed to key_fn */
    bool unique;        /* refuse a second entry with an equal key */
    uint8_t *scratch;   /* receives keys from key_fn */
    size_t scratch_cap; /* at least the longest key ever added */
    uint8_t *block;     /* populated node slots (fm_btree_reserve) */
    size_t block_bytes;
    size_t block_used; /* bytes of it handed out at least once */
    void *free_slots;  /* freed slots of the block, linked */
    size_t n_free_slots;
    struct fm_btree_pool *pool; /* when malloc fails, if open; may be NULL */
};

/* A search key: the caller's key, its hint and a rank for the rowid. */
struct probe {
    const uint8_t *key;
    size_t key_len;
    uint64_t hint;
    uint64_t rank; /* rowid + 1, RANK_BELOW or RANK_ABOVE */
};

/* The nodes of one descent; level 0 is the leaf, height - 1 the root. */
struct path {
    struct node *node[MAX_HEIGHT];
    size_t idx[MAX_HEIGHT]; /* leaf: entry position; inner: child taken */
};

/* The nodes a split may need, allocated before the tree is touched. */
struct spare {
    struct leaf *leaf;
    struct inner *inner[MAX_HEIGHT];
    size_t n_inner;
};

static struct leaf *as_leaf(struct node *nd)
{
    FM_ASSERT(nd->level == 0);
    return FM_CONTAINER_OF(nd, struct leaf, hdr);
}

static struct inner *as_inner(struct node *nd)
{
    FM_ASSERT(nd->level > 0);
    return FM_CONTAINER_OF(nd, struct inner, hdr);
}

static uint64_t key_hint(const uint8_t *key, size_t key_len)
{
    uint8_t b[HINT_BYTES] = {0};
    if (key_len > 0)
        memcpy(b, key, key_len < HINT_BYTES ? key_len : HINT_BYTES);
    return fm_load_be64(b);
}

static struct entry make_entry(const uint8_t *key, size_t key_len,
                               uint64_t rowid)
{
    uint64_t len = key_len < META_LEN_MAX ? key_len : META_LEN_MAX;
    struct entry e = {key_hint(key, key_len), rowid | len << META_LEN_SHIFT};
    return e;
}

static uint64_t entry_rowid(const struct entry *e)
{
    return e->meta & META_ROWID_MASK;
}

static size_t entry_len(const struct entry *e)
{
    return (size_t)(e->meta >> META_LEN_SHIFT);
}

static void make_probe(struct probe *p, const uint8_t *key, size_t key_len,
                       uint64_t rank)
{
    p->key = key;
    p->key_len = key_len;
    p->hint = key_hint(key, key_len);
    p->rank = rank;
}

static int cmp_size(size_t a, size_t b)
{
    return (a > b) - (a < b);
}

static int cmp_long_key(struct fm_btree *t, const struct probe *p,
                        const struct entry *e)
{
    size_t len =
        t->key_fn(t->key_ctx, entry_rowid(e), t->scratch, t->scratch_cap);
    /*
     * Insert and append grew scratch to the longest key ever added, and a
     * row keeps its key while it is indexed; anything else is a broken
     * callback, not input.
     */
    FM_ASSERT(len <= t->scratch_cap && len > HINT_BYTES);
    size_t common = p->key_len < len ? p->key_len : len;
    int c = memcmp(p->key + HINT_BYTES, t->scratch + HINT_BYTES,
                   common - HINT_BYTES);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return cmp_size(p->key_len, len);
}

/* Compares the probe's key with the entry's key: -1, 0 or 1. */
static int cmp_key(struct fm_btree *t, const struct probe *p,
                   const struct entry *e)
{
    if (p->hint != e->hint)
        return p->hint < e->hint ? -1 : 1;
    size_t e_len = entry_len(e);
    /* A key of at most 8 bytes lies in the hint: it is a prefix of the
     * other key, and the clamped length still orders correctly. */
    if (p->key_len <= HINT_BYTES || e_len <= HINT_BYTES)
        return cmp_size(p->key_len, e_len);
    return cmp_long_key(t, p, e);
}

/* Compares the probe with the entry by key, then by rank against rowid. */
static int cmp_probe(struct fm_btree *t, const struct probe *p,
                     const struct entry *e)
{
    int c = cmp_key(t, p, e);
    if (c != 0)
        return c;
    uint64_t r = entry_rowid(e) + 1;
    return (p->rank > r) - (p->rank < r);
}

/*
 * The first position in the leaf whose entry is >= p, or n. A plain
 * branchy binary search: on nodes out of cache it beat a branchless one
 * (with or without prefetching) by 1.5-2x in bench_btree, since speculation
 * overlaps the cache misses of successive halvings.
 */
static size_t leaf_lower_bound(struct fm_btree *t, const struct leaf *lf,
                               const struct probe *p)
{
    size_t lo = 0;
    size_t hi = lf->hdr.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_probe(t, p, &lf->e[mid]) > 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/*
 * The child to descend into: the last one whose smallest entry is <= p, or
 * child 0 when p is below them all (so key[0] is never compared).
 */
static size_t inner_child_index(struct fm_btree *t, const struct inner *in,
                                const struct probe *p)
{
    size_t lo = 1;
    size_t hi = in->hdr.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_probe(t, p, &in->key[mid]) >= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - 1;
}

static void descend(struct fm_btree *t, const struct probe *p,
                    struct path *path)
{
    struct node *nd = t->root;
    for (size_t l = t->height - 1; l > 0; l--) {
        struct inner *in = as_inner(nd);
        size_t i = inner_child_index(t, in, p);
        path->node[l] = nd;
        path->idx[l] = i;
        nd = in->child[i];
    }
    path->node[0] = nd;
    path->idx[0] = leaf_lower_bound(t, as_leaf(nd), p);
}

/* The path to the end of the last leaf, for appends. */
static void descend_right(struct fm_btree *t, struct path *path)
{
    struct node *nd = t->root;
    for (size_t l = t->height - 1; l > 0; l--) {
        struct inner *in = as_inner(nd);
        path->node[l] = nd;
        path->idx[l] = (size_t)in->hdr.n - 1;
        nd = in->child[in->hdr.n - 1];
    }
    path->node[0] = nd;
    path->idx[0] = as_leaf(nd)->hdr.n;
}

/* True when path->node[l] is the last node of its level. */
static bool path_is_rightmost(const struct fm_btree *t, const struct path *path,
                              size_t l)
{
    for (size_t k = l + 1; k < t->height; k++) {
        if (path->idx[k] + 1 != path->node[k]->n)
            return false;
    }
    return true;
}

/*
 * Copies min, the new smallest entry of path->node[l], into its parent and
 * on up while the node is the first child of its parent.
 */
static void update_min(struct fm_btree *t, const struct path *path, size_t l,
                       struct entry min)
{
    for (size_t k = l + 1; k < t->height; k++) {
        as_inner(path->node[k])->key[path->idx[k]] = min;
        if (path->idx[k] != 0)
            break;
    }
}

static size_t node_cap(const struct node *nd)
{
    return nd->level == 0 ? LEAF_CAP : INNER_CAP;
}

/* A node's sort keys: a leaf's entries or an inner node's keys. */
static struct entry *node_keys(struct node *nd)
{
    return nd->level == 0 ? as_leaf(nd)->e : as_inner(nd)->key;
}

/* An inner node's children; NULL for a leaf. */
static struct node **node_children(struct node *nd)
{
    return nd->level == 0 ? NULL : as_inner(nd)->child;
}

/*
 * Adds the slot (key, child) at pos of a node with room. A leaf's slot is
 * an entry alone, and child is NULL.
 */
static void node_put(struct node *nd, size_t pos, struct entry key,
                     struct node *child)
{
    FM_ASSERT(nd->n < node_cap(nd) && pos <= nd->n);
    size_t n_move = nd->n - pos;
    struct entry *keys = node_keys(nd);
    memmove(&keys[pos + 1], &keys[pos], n_move * sizeof(key));
    keys[pos] = key;
    struct node **children = node_children(nd);
    if (children != NULL) {
        memmove(&children[pos + 1], &children[pos], n_move * sizeof(child));
        children[pos] = child;
    }
    nd->n++;
}

static void inner_cut(struct inner *in, size_t pos)
{
    FM_ASSERT(pos < in->hdr.n);
    size_t n_move = in->hdr.n - pos - 1;
    memmove(&in->key[pos], &in->key[pos + 1], n_move * sizeof(in->key[0]));
    memmove(&in->child[pos], &in->child[pos + 1],
            n_move * sizeof(in->child[0]));
    in->hdr.n--;
}

/* A node's memory: a freed slot of the block, a fresh one, or malloc. */
static void *node_alloc(struct fm_btree *t, size_t size)
{
    FM_ASSERT(size <= NODE_SLOT);
    void *p = t->free_slots;
    if (p != NULL) {
        memcpy(&t->free_slots, p, sizeof(void *));
        t->n_free_slots--;
        return p;
    }
    if (t->block_used + NODE_SLOT <= t->block_bytes) {
        p = t->block + t->block_used;
        t->block_used += NODE_SLOT;
        return p;
    }
    p = fm_malloc(size);
    struct fm_btree_pool *pool = t->pool;
    if (p == NULL && pool != NULL && pool->open && pool->free != NULL) {
        /* Pool nodes are malloc'd blocks of NODE_BYTES_MAX: freed as any. */
        p = pool->free;
        memcpy(&pool->free, p, sizeof(void *));
        pool->n--;
        pool->used++;
    }
    return p;
}

fm_status fm_btree_pool_fill(struct fm_btree_pool *pool, size_t n)
{
    while (pool->n < n) {
        void *p = fm_malloc(NODE_BYTES_MAX);
        if (p == NULL)
            return FM_ERR_NOMEM;
        memcpy(p, &pool->free, sizeof(void *));
        pool->free = p;
        pool->n++;
    }
    pool->used = 0;
    return FM_OK;
}

void fm_btree_pool_fini(struct fm_btree_pool *pool)
{
    while (pool->free != NULL) {
        void *p = pool->free;
        memcpy(&pool->free, p, sizeof(void *));
        fm_free(p);
    }
    memset(pool, 0, sizeof(*pool));
}

size_t fm_btree_pool_bytes(const struct fm_btree_pool *pool)
{
    return pool->n * NODE_BYTES_MAX;
}

void fm_btree_set_pool(struct fm_btree *t, struct fm_btree_pool *pool)
{
    t->pool = pool;
}

static void node_free(struct fm_btree *t, void *p)
{
    uint8_t *b = p;
    if (b != NULL && t->block != NULL && b >= t->block &&
        b < t->block + t->block_bytes) {
        memcpy(p, &t->free_slots, sizeof(void *));
        t->free_slots = p;
        t->n_free_slots++;
        return;
    }
    fm_free(p);
}

static struct leaf *leaf_new(struct fm_btree *t)
{
    struct leaf *lf = node_alloc(t, sizeof(*lf));
    if (lf == NULL)
        return NULL;
    lf->hdr.n = 0;
    lf->hdr.level = 0;
    lf->hdr.unused = 0;
    lf->prev = NULL;
    lf->next = NULL;
    return lf;
}

static struct inner *inner_new(struct fm_btree *t)
{
    struct inner *in = node_alloc(t, sizeof(*in));
    if (in == NULL)
        return NULL;
    in->hdr.n = 0;
    in->hdr.level = 0;
    in->hdr.unused = 0;
    return in;
}

/*
 * What becomes of a full node given one more slot. A sibling is a
 * neighbour under the same parent; the new node, if any, always goes just
 * after the full node, so that the parent gains it at path->idx + 1.
 */
enum overflow {
    OVERFLOW_APPEND,      /* past the end of the last node of its level:
                             a new node takes the slot alone */
    OVERFLOW_SPLIT,       /* no sibling: node and new node share */
    OVERFLOW_SHIFT_LEFT,  /* left sibling has room: the two share */
    OVERFLOW_SHIFT_RIGHT, /* right sibling has room: the two share */
    OVERFLOW_SPLIT_LEFT,  /* both full: left, node and new node share */
    OVERFLOW_SPLIT_RIGHT, /* both full: node, new node and right share */
};

/* The position at which level l of path receives its new slot. */
static size_t slot_pos(const struct path *path, size_t l)
{
    return l == 0 ? path->idx[0] : path->idx[l] + 1;
}

/*
 * Chooses for the full node at level l of path. It depends only on the
 * fill of that node and its siblings, which adding slots below level l
 * does not change, so spare_reserve can plan ahead with it.
 */
static enum overflow choose_overflow(const struct fm_btree *t,
                                     const struct path *path, size_t l)
{
    size_t cap = node_cap(path->node[l]);
    FM_ASSERT(path->node[l]->n == cap);
    if (slot_pos(path, l) == cap && path_is_rightmost(t, path, l))
        return OVERFLOW_APPEND;
    if (l + 1 == t->height)
        return OVERFLOW_SPLIT;
    const struct inner *parent = as_inner(path->node[l + 1]);
    size_t i = path->idx[l + 1];
    bool has_left = i > 0;
    bool has_right = i + 1 < parent->hdr.n;
    size_t room_left = has_left ? cap - parent->child[i - 1]->n : 0;
    size_t room_right = has_right ? cap - parent->child[i + 1]->n : 0;
    if (room_left > room_right)
        return OVERFLOW_SHIFT_LEFT;
    if (room_right > 0)
        return OVERFLOW_SHIFT_RIGHT;
    if (has_right)
        return OVERFLOW_SPLIT_RIGHT;
    return has_left ? OVERFLOW_SPLIT_LEFT : OVERFLOW_SPLIT;
}

static bool is_shift(enum overflow ov)
{
    return ov == OVERFLOW_SHIFT_LEFT || ov == OVERFLOW_SHIFT_RIGHT;
}

static void spare_release(struct fm_btree *t, struct spare *sp)
{
    node_free(t, sp->leaf);
    for (size_t i = 0; i < sp->n_inner; i++)
        node_free(t, sp->inner[i]);
}

/*
 * Allocates every node that adding an entry to the full leaf at the bottom
 * of path will need: one per level, from the leaf up, until a level has
 * room or a sibling to shift into, and a new root if no level does.
 */
static fm_status spare_reserve(struct fm_btree *t, const struct path *path,
                               struct spare *sp)
{
    bool need_leaf = false;
    size_t n_inner = 0;
    for (size_t l = 0;; l++) {
        if (l == t->height) {
            n_inner++; /* a new root */
            break;
        }
        if (path->node[l]->n < node_cap(path->node[l]) ||
            is_shift(choose_overflow(t, path, l)))
            break;
        if (l == 0)
            need_leaf = true;
        else
            n_inner++;
    }
    FM_ASSERT(n_inner < MAX_HEIGHT);
    sp->leaf = NULL;
    sp->n_inner = 0;
    if (need_leaf && (sp->leaf = leaf_new(t)) == NULL)
        goto fail;
    while (sp->n_inner < n_inner) {
        sp->inner[sp->n_inner] = inner_new(t);
        if (sp->inner[sp->n_inner] == NULL)
            goto fail;
        sp->n_inner++;
    }
    return FM_OK;
fail:
    spare_release(t, sp);
    return FM_ERR_NOMEM;
}

static struct inner *spare_take_inner(struct spare *sp)
{
    FM_ASSERT(sp->n_inner > 0);
    return sp->inner[--sp->n_inner];
}

/* Takes a spare node for level l and counts it in the tree. */
static struct node *spare_take(struct fm_btree *t, struct spare *sp, size_t l)
{
    if (l == 0) {
        struct leaf *lf = sp->leaf;
        FM_ASSERT(lf != NULL);
        sp->leaf = NULL;
        t->n_leaves++;
        return &lf->hdr;
    }
    struct inner *in = spare_take_inner(sp);
    in->hdr.level = (uint16_t)l;
    t->n_inners++;
    return &in->hdr;
}

static void grow_root(struct fm_btree *t, struct node *right, struct entry key,
                      struct spare *sp)
{
    struct inner *root = spare_take_inner(sp);
    root->hdr.level = (uint16_t)t->height;
    root->hdr.n = 2;
    root->key[0] = t->head->e[0];
    root->child[0] = t->root;
    root->key[1] = key;
    root->child[1] = right;
    t->root = &root->hdr;
    t->height++;
    t->n_inners++;
    FM_ASSERT(t->height < MAX_HEIGHT);
}

static void link_leaf_after(struct fm_btree *t, struct leaf *lf, struct leaf *r)
{
    r->prev = lf;
    r->next = lf->next;
    if (lf->next != NULL)
        lf->next->prev = r;
    else
        t->tail = r;
    lf->next = r;
}

/* The slots of two full nodes and one more, in key order. */
struct slots {
    size_t n;
    struct entry key[2 * LEAF_CAP + 1];
    struct node *child[2 * INNER_CAP + 1]; /* unused for leaves */
};

static void slots_copy_from(struct slots *s, size_t to, struct node *nd,
                            size_t from, size_t n)
{
    memcpy(&s->key[to], &node_keys(nd)[from], n * sizeof(s->key[0]));
    struct node **children = node_children(nd);
    if (children != NULL)
        memcpy(&s->child[to], &children[from], n * sizeof(s->child[0]));
}

/* Gathers the slots of src[0..n_src), with (key, child) at position c. */
static void slots_gather(struct slots *s, struct node *const *src, size_t n_src,
                         size_t c, struct entry key, struct node *child)
{
    size_t at = 0;
    for (size_t i = 0; i < n_src; i++) {
        size_t n = src[i]->n;
        size_t before = c <= at ? 0 : c - at < n ? c - at : n;
        slots_copy_from(s, at, src[i], 0, before);
        slots_copy_from(s, at + before + 1, src[i], before, n - before);
        at += n;
    }
    FM_ASSERT(c <= at);
    s->key[c] = key;
    if (src[0]->level > 0)
        s->child[c] = child;
    s->n = at + 1;
}

/* Deals the slots out evenly over dst[0..n_dst), in order. */
static void slots_scatter(const struct slots *s, struct node *const *dst,
                          size_t n_dst)
{
    size_t from = 0;
    for (size_t i = 0; i < n_dst; i++) {
        struct node *nd = dst[i];
        size_t to = s->n * (i + 1) / n_dst;
        size_t n = to - from;
        FM_ASSERT(n > 0 && n <= node_cap(nd));
        memcpy(node_keys(nd), &s->key[from], n * sizeof(s->key[0]));
        struct node **children = node_children(nd);
        if (children != NULL)
            memcpy(children, &s->child[from], n * sizeof(s->child[0]));
        nd->n = (uint16_t)n;
        from = to;
    }
}

/*
 * Adds (key, child) at pos of the full node at level l of path, as
 * choose_overflow decides. Returns the new node, which the parent must gain
 * just after path->node[l], or NULL when the parent keeps its children.
 * Either way the parent's copies of the smallest entries are brought up to
 * date for the nodes that already were its children.
 */
static struct node *overflow(struct fm_btree *t, const struct path *path,
                             size_t l, size_t pos, struct entry key,
                             struct node *child, struct spare *sp)
{
    struct node *nd = path->node[l];
    enum overflow ov = choose_overflow(t, path, l);
    struct node *r = is_shift(ov) ? NULL : spare_take(t, sp, l);
    if (ov == OVERFLOW_APPEND) {
        node_put(r, 0, key, child);
    } else {
        /* pair[0] at parent index i, and pair[1] just after it if any. */
        size_t i = l + 1 < t->height ? path->idx[l + 1] : 0;
        struct node *pair[2] = {nd, NULL};
        if (ov == OVERFLOW_SHIFT_LEFT || ov == OVERFLOW_SPLIT_LEFT) {
            pair[0] = as_inner(path->node[l + 1])->child[--i];
            pair[1] = nd;
        } else if (ov != OVERFLOW_SPLIT) {
            pair[1] = as_inner(path->node[l + 1])->child[i + 1];
        }
        size_t c = pos + (pair[0] == nd ? 0 : pair[0]->n);
        struct slots s;
        slots_gather(&s, pair, pair[1] != NULL ? 2 : 1, c, key, child);
        struct node *dst[3] = {pair[0], r, pair[1]};
        if (ov == OVERFLOW_SPLIT_LEFT) {
            dst[1] = nd;
            dst[2] = r;
        }
        size_t n_dst = (pair[1] != NULL ? 2 : 1) + (r != NULL ? 1 : 0);
        slots_scatter(&s, is_shift(ov) ? pair : dst, n_dst);
        if (pair[1] != NULL)
            as_inner(path->node[l + 1])->key[i + 1] = node_keys(pair[1])[0];
        if (c == 0)
            update_min(t, path, l, key);
    }
    if (r != NULL && l == 0)
        link_leaf_after(t, as_leaf(nd), as_leaf(r));
    return r;
}

/*
 * Adds the entry e at the leaf position at the bottom of path, and each
 * node that an overflow creates to the level above, up to a new root.
 */
static void add_entry(struct fm_btree *t, const struct path *path,
                      struct entry e, struct spare *sp)
{
    struct entry key = e;
    struct node *child = NULL;
    for (size_t l = 0;; l++) {
        if (l == t->height) {
            grow_root(t, child, key, sp);
            return;
        }
        struct node *nd = path->node[l];
        size_t pos = slot_pos(path, l);
        if (nd->n < node_cap(nd)) {
            node_put(nd, pos, key, child);
            if (pos == 0)
                update_min(t, path, l, key);
            return;
        }
        child = overflow(t, path, l, pos, key, child, sp);
        if (child == NULL)
            return;
        key = node_keys(child)[0];
    }
}

static fm_status add_first(struct fm_btree *t, struct entry e)
{
    struct leaf *lf = leaf_new(t);
    if (lf == NULL)
        return FM_ERR_NOMEM;
    node_put(&lf->hdr, 0, e, NULL);
    t->root = &lf->hdr;
    t->head = lf;
    t->tail = lf;
    t->height = 1;
    t->n_leaves = 1;
    t->count = 1;
    return FM_OK;
}

#if defined(FM_DEBUG_CHECKS) && FM_DEBUG_CHECKS
/* A cheap local check for debug builds: hints ascend within the leaf. */
static void debug_check_leaf(const struct leaf *lf)
{
    FM_ASSERT(lf->hdr.n <= LEAF_CAP);
    for (size_t i = 1; i < lf->hdr.n; i++)
        FM_ASSERT(lf->e[i - 1].hint <= lf->e[i].hint);
}
#else
static void debug_check_leaf(const struct leaf *lf)
{
    (void)lf;
}
#endif

/* Adds e at the leaf position at the bottom of path. */
static fm_status insert_at(struct fm_btree *t, const struct path *path,
                           struct entry e)
{
    struct leaf *lf = as_leaf(path->node[0]);
    struct spare sp;
    sp.leaf = NULL;
    sp.n_inner = 0;
    if (lf->hdr.n == LEAF_CAP) {
        fm_status st = spare_reserve(t, path, &sp);
        if (st != FM_OK)
            return st;
    }
    add_entry(t, path, e, &sp);
    FM_ASSERT(sp.leaf == NULL && sp.n_inner == 0);
    t->count++;
    debug_check_leaf(lf);
    return FM_OK;
}

/* Makes sure that keys of key_len bytes can be fetched for comparison. */
static fm_status reserve_scratch(struct fm_btree *t, size_t key_len)
{
    if (key_len <= t->scratch_cap || key_len <= HINT_BYTES)
        return FM_OK;
    size_t cap = t->scratch_cap < SCRATCH_MIN ? SCRATCH_MIN : t->scratch_cap;
    while (cap < key_len)
        cap = cap > SIZE_MAX / 2 ? key_len : cap * 2;
    uint8_t *p = fm_realloc(t->scratch, cap);
    if (p == NULL)
        return FM_ERR_NOMEM;
    t->scratch = p;
    t->scratch_cap = cap;
    return FM_OK;
}

fm_status fm_btree_new(fm_key_fn key_fn, void *ctx, bool unique,
                       struct fm_btree **out)
{
    FM_ASSERT(key_fn != NULL && out != NULL);
    struct fm_btree *t = fm_calloc(1, sizeof(*t));
    if (t == NULL)
        return FM_ERR_NOMEM;
    t->key_fn = key_fn;
    t->key_ctx = ctx;
    t->unique = unique;
    *out = t;
    return FM_OK;
}

static void free_subtree(struct fm_btree *t, struct node *nd)
{
    if (nd->level > 0) {
        struct inner *in = as_inner(nd);
        for (size_t i = 0; i < in->hdr.n; i++)
            free_subtree(t, in->child[i]);
        node_free(t, in);
    } else {
        node_free(t, as_leaf(nd));
    }
}

void fm_btree_free(struct fm_btree *t)
{
    if (t == NULL)
        return;
    if (t->root != NULL)
        free_subtree(t, t->root);
    fm_unmap(t->block, t->block_bytes);
    fm_free(t->scratch);
    fm_free(t);
}

/* True when the position at the bottom of path, or the next leaf's first
 * entry, holds an entry that the insert of p would duplicate. */
static bool is_duplicate(struct fm_btree *t, const struct probe *p,
                         const struct path *path)
{
    struct leaf *lf = as_leaf(path->node[0]);
    size_t pos = path->idx[0];
    if (pos == lf->hdr.n) {
        lf = lf->next;
        pos = 0;
    }
    if (lf == NULL)
        return false;
    if (t->unique)
        return cmp_key(t, p, &lf->e[pos]) == 0;
    return cmp_probe(t, p, &lf->e[pos]) == 0;
}

fm_status fm_btree_insert(struct fm_btree *t, const uint8_t *key,
                          size_t key_len, uint64_t rowid)
{
    FM_ASSERT(t != NULL && (key != NULL || key_len == 0));
    FM_ASSERT(rowid < FM_BTREE_ROWID_MAX);
    fm_status st = reserve_scratch(t, key_len);
    if (st != FM_OK)
        return st;
    struct entry e = make_entry(key, key_len, rowid);
    if (t->root == NULL)
        return add_first(t, e);
    /* A unique tree looks for the first entry with an equal key. */
    struct probe p;
    make_probe(&p, key, key_len, t->unique ? RANK_BELOW : rowid + 1);
    struct path path;
    descend(t, &p, &path);
    if (is_duplicate(t, &p, &path))
        return FM_ERR_UNIQUE;
    return insert_at(t, &path, e);
}

fm_status fm_btree_append(struct fm_btree *t, const uint8_t *key,
                          size_t key_len, uint64_t rowid)
{
    FM_ASSERT(t != NULL && (key != NULL || key_len == 0));
    FM_ASSERT(rowid < FM_BTREE_ROWID_MAX);
    fm_status st = reserve_scratch(t, key_len);
    if (st != FM_OK)
        return st;
    struct entry e = make_entry(key, key_len, rowid);
    if (t->root == NULL)
        return add_first(t, e);
    struct probe p;
    make_probe(&p, key, key_len, rowid + 1);
    const struct entry *last = &t->tail->e[t->tail->hdr.n - 1];
    int c = t->unique ? cmp_key(t, &p, last) : cmp_probe(t, &p, last);
    if (c == 0 && t->unique)
        return FM_ERR_UNIQUE;
    if (c <= 0)
        return FM_ERR_STATE;
    if (t->tail->hdr.n < LEAF_CAP) {
        t->tail->e[t->tail->hdr.n++] = e;
        t->count++;
        return FM_OK;
    }
    struct path path;
    descend_right(t, &path);
    return insert_at(t, &path, e);
}

static void unlink_leaf(struct fm_btree *t, struct leaf *lf)
{
    if (lf->prev != NULL)
        lf->prev->next = lf->next;
    else
        t->head = lf->next;
    if (lf->next != NULL)
        lf->next->prev = lf->prev;
    else
        t->tail = lf->prev;
}

static void drop_node(struct fm_btree *t, struct node *nd)
{
    if (nd->level == 0) {
        struct leaf *lf = as_leaf(nd);
        unlink_leaf(t, lf);
        node_free(t, lf);
        t->n_leaves--;
    } else {
        node_free(t, as_inner(nd));
        t->n_inners--;
    }
}

/*
 * Merges or evens out the leaves at li and li + 1 of parent. Returns true
 * when they merged, so that parent lost a child.
 */
static bool fix_leaves(struct fm_btree *t, struct inner *parent, size_t li)
{
    struct leaf *a = as_leaf(parent->child[li]);
    struct leaf *b = as_leaf(parent->child[li + 1]);
    size_t total = (size_t)a->hdr.n + b->hdr.n;
    /* Only the last leaf of a level can be empty, and it is never a. */
    FM_ASSERT(a->hdr.n > 0);
    if (total <= LEAF_CAP) {
        memcpy(&a->e[a->hdr.n], b->e, b->hdr.n * sizeof(b->e[0]));
        a->hdr.n = (uint16_t)total;
        drop_node(t, &b->hdr);
        inner_cut(parent, li + 1);
        return true;
    }
    size_t new_a = total / 2;
    if (a->hdr.n < new_a) {
        size_t k = new_a - a->hdr.n;
        memcpy(&a->e[a->hdr.n], b->e, k * sizeof(b->e[0]));
        memmove(b->e, &b->e[k], (b->hdr.n - k) * sizeof(b->e[0]));
    } else {
        size_t k = a->hdr.n - new_a;
        memmove(&b->e[k], b->e, b->hdr.n * sizeof(b->e[0]));
        memcpy(b->e, &a->e[new_a], k * sizeof(b->e[0]));
    }
    a->hdr.n = (uint16_t)new_a;
    b->hdr.n = (uint16_t)(total - new_a);
    parent->key[li + 1] = b->e[0];
    return false;
}

/* fix_leaves for inner nodes; keys travel with their children. */
static bool fix_inners(struct fm_btree *t, struct inner *parent, size_t li)
{
    struct inner *a = as_inner(parent->child[li]);
    struct inner *b = as_inner(parent->child[li + 1]);
    size_t total = (size_t)a->hdr.n + b->hdr.n;
    FM_ASSERT(a->hdr.n > 0);
    if (total <= INNER_CAP) {
        memcpy(&a->key[a->hdr.n], b->key, b->hdr.n * sizeof(b->key[0]));
        memcpy(&a->child[a->hdr.n], b->child, b->hdr.n * sizeof(b->child[0]));
        a->hdr.n = (uint16_t)total;
        drop_node(t, &b->hdr);
        inner_cut(parent, li + 1);
        return true;
    }
    size_t new_a = total / 2;
    if (a->hdr.n < new_a) {
        size_t k = new_a - a->hdr.n;
        size_t rest = b->hdr.n - k;
        memcpy(&a->key[a->hdr.n], b->key, k * sizeof(b->key[0]));
        memcpy(&a->child[a->hdr.n], b->child, k * sizeof(b->child[0]));
        memmove(b->key, &b->key[k], rest * sizeof(b->key[0]));
        memmove(b->child, &b->child[k], rest * sizeof(b->child[0]));
    } else {
        size_t k = a->hdr.n - new_a;
        memmove(&b->key[k], b->key, b->hdr.n * sizeof(b->key[0]));
        memmove(&b->child[k], b->child, b->hdr.n * sizeof(b->child[0]));
        memcpy(b->key, &a->key[new_a], k * sizeof(b->key[0]));
        memcpy(b->child, &a->child[new_a], k * sizeof(b->child[0]));
    }
    a->hdr.n = (uint16_t)new_a;
    b->hdr.n = (uint16_t)(total - new_a);
    parent->key[li + 1] = b->key[0];
    return false;
}

/* Restores the fill invariants from the leaf of path upwards. */
static void rebalance(struct fm_btree *t, const struct path *path)
{
    for (size_t l = 0; l + 1 < t->height; l++) {
        struct node *nd = path->node[l];
        size_t min = l == 0 ? LEAF_MIN : INNER_MIN;
        if (nd->n >= min || (nd->n > 0 && path_is_rightmost(t, path, l)))
            break;
        struct inner *parent = as_inner(path->node[l + 1]);
        size_t i = path->idx[l + 1];
        if (parent->hdr.n == 1) {
            /* The empty last node of its level under a last node with one
             * child: drop it, and the parent is now empty in turn. */
            FM_ASSERT(nd->n == 0);
            drop_node(t, nd);
            parent->hdr.n = 0;
            continue;
        }
        size_t li = i + 1 < parent->hdr.n ? i : i - 1;
        bool merged =
            l == 0 ? fix_leaves(t, parent, li) : fix_inners(t, parent, li);
        if (!merged)
            break;
    }
    while (t->height > 1 && t->root->n == 1) {
        struct inner *root = as_inner(t->root);
        t->root = root->child[0];
        node_free(t, root);
        t->n_inners--;
        t->height--;
    }
}

bool fm_btree_remove(struct fm_btree *t, const uint8_t *key, size_t key_len,
                     uint64_t rowid)
{
    FM_ASSERT(t != NULL && (key != NULL || key_len == 0));
    if (t->root == NULL || rowid >= FM_BTREE_ROWID_MAX)
        return false;
    struct probe p;
    make_probe(&p, key, key_len, rowid + 1);
    struct path path;
    descend(t, &p, &path);
    struct leaf *lf = as_leaf(path.node[0]);
    size_t pos = path.idx[0];
    if (pos == lf->hdr.n || cmp_probe(t, &p, &lf->e[pos]) != 0)
        return false;
    memmove(&lf->e[pos], &lf->e[pos + 1],
            (lf->hdr.n - pos - 1) * sizeof(lf->e[0]));
    lf->hdr.n--;
    t->count--;
    if (t->height == 1) {
        if (lf->hdr.n == 0) {
            node_free(t, lf);
            t->root = NULL;
            t->head = NULL;
            t->tail = NULL;
            t->height = 0;
            t->n_leaves = 0;
        }
        return true;
    }
    /* The removed entry's row may be deleted next: no copy of it may stay
     * in an inner node. An emptied leaf is dropped with its copies. */
    if (pos == 0 && lf->hdr.n > 0)
        update_min(t, &path, 0, lf->e[0]);
    debug_check_leaf(lf);
    rebalance(t, &path);
    return true;
}

/* The first entry >= p, or NULL past the last one. */
static struct leaf *seek(struct fm_btree *t, const struct probe *p,
                         size_t *pos_out)
{
    struct node *nd = t->root;
    while (nd->level > 0) {
        struct inner *in = as_inner(nd);
        nd = in->child[inner_child_index(t, in, p)];
    }
    struct leaf *lf = as_leaf(nd);
    size_t pos = leaf_lower_bound(t, lf, p);
    if (pos == lf->hdr.n) {
        lf = lf->next;
        pos = 0;
    }
    *pos_out = pos;
    return lf;
}

bool fm_btree_find(struct fm_btree *t, const uint8_t *key, size_t key_len,
                   uint64_t *rowid_out)
{
    FM_ASSERT(t != NULL && (key != NULL || key_len == 0));
    if (t->root == NULL)
        return false;
    struct probe p;
    make_probe(&p, key, key_len, RANK_BELOW);
    size_t pos;
    struct leaf *lf = seek(t, &p, &pos);
    if (lf == NULL || cmp_key(t, &p, &lf->e[pos]) != 0)
        return false;
    *rowid_out = entry_rowid(&lf->e[pos]);
    return true;
}

bool fm_btree_contains(struct fm_btree *t, const uint8_t *key, size_t key_len,
                       uint64_t rowid)
{
    FM_ASSERT(t != NULL && (key != NULL || key_len == 0));
    if (t->root == NULL || rowid >= FM_BTREE_ROWID_MAX)
        return false;
    struct probe p;
    make_probe(&p, key, key_len, rowid + 1);
    size_t pos;
    struct leaf *lf = seek(t, &p, &pos);
    return lf != NULL && cmp_probe(t, &p, &lf->e[pos]) == 0;
}

size_t fm_btree_count(const struct fm_btree *t)
{
    return t->count;
}

size_t fm_btree_memory_bytes(const struct fm_btree *t)
{
    /* Block slots not in use: never handed out, or freed. */
    size_t idle = t->block_bytes - t->block_used + t->n_free_slots * NODE_SLOT;
    return sizeof(*t) + t->n_leaves * sizeof(struct leaf) +
           t->n_inners * sizeof(struct inner) + idle + t->scratch_cap;
}

fm_status fm_btree_reserve(struct fm_btree *t, size_t n_entries)
{
    FM_ASSERT(t != NULL);
    if (t->block != NULL || n_entries == 0)
        return FM_OK;
    /* Full leaves as fm_btree_append leaves them, and inner nodes for them
     * at every level, plus one node per level for partial last nodes. */
    size_t nodes = n_entries / LEAF_CAP + 1;
    for (size_t level = nodes; level > 1; level = level / INNER_CAP + 1)
        nodes += level / INNER_CAP + 1;
    nodes += MAX_HEIGHT;
    size_t bytes;
    if (fm_mul_overflows(nodes, NODE_SLOT, &bytes))
        return FM_ERR_NOMEM;
    t->block = fm_map_populated(bytes, true);
    if (t->block == NULL)
        return FM_ERR_NOMEM;
    t->block_bytes = bytes;
    t->block_used = 0;
    return FM_OK;
}

/*
 * The first position whose entry is past the bound in ascending order: past
 * an inclusive bound means above it, past an exclusive one means at or
 * above it. With above false, the first position at or above an inclusive
 * bound, or above an exclusive one. NULL when there is no such entry.
 */
static struct leaf *seek_bound(struct fm_btree *t,
                               const struct fm_btree_bound *b, bool past,
                               size_t *pos_out)
{
    struct probe p;
    bool above = past == b->inclusive;
    make_probe(&p, b->key, b->key_len, above ? RANK_ABOVE : RANK_BELOW);
    return seek(t, &p, pos_out);
}

/* The position before (lf, pos), where NULL is past the end. */
static struct leaf *step_back(struct fm_btree *t, struct leaf *lf, size_t *pos)
{
    if (lf == NULL)
        lf = t->tail;
    else if (*pos > 0) {
        (*pos)--;
        return lf;
    } else
        lf = lf->prev;
    *pos = lf != NULL ? (size_t)lf->hdr.n - 1 : 0;
    return lf;
}

/* True when the entry at (lf, pos) is inside bound b on its side. */
static bool within(struct fm_btree *t, const struct leaf *lf, size_t pos,
                   const struct fm_btree_bound *b, bool upper)
{
    if (b->key == NULL)
        return true;
    struct probe p;
    make_probe(&p, b->key, b->key_len, RANK_BELOW);
    int c = cmp_key(t, &p, &lf->e[pos]);
    if (upper)
        c = -c;
    return b->inclusive ? c <= 0 : c < 0;
}

void fm_btree_iter_init(struct fm_btree_iter *it, struct fm_btree *t,
                        const struct fm_btree_bound *lo,
                        const struct fm_btree_bound *hi, bool reverse)
{
    FM_ASSERT(it != NULL && t != NULL);
    memset(it, 0, sizeof(*it));
    it->tree = t;
    it->reverse = reverse;
    if (lo != NULL)
        it->lo = *lo;
    if (hi != NULL)
        it->hi = *hi;
    if (t->root == NULL)
        return;
    struct leaf *first = t->head;
    size_t first_pos = 0;
    struct leaf *past = NULL;
    size_t past_pos = 0;
    if (it->lo.key != NULL)
        first = seek_bound(t, &it->lo, false, &first_pos);
    if (it->hi.key != NULL)
        past = seek_bound(t, &it->hi, true, &past_pos);
    /* The range is [first, past); it is empty when first is outside hi. */
    if (!reverse) {
        if (first == NULL || !within(t, first, first_pos, &it->hi, true))
            return;
        it->leaf = first;
        it->pos = (int)first_pos;
        it->stop_leaf = past;
        it->stop_pos = (int)past_pos;
        return;
    }
    struct leaf *last = step_back(t, past, &past_pos);
    if (last == NULL || !within(t, last, past_pos, &it->lo, false))
        return;
    struct leaf *stop = step_back(t, first, &first_pos);
    it->leaf = last;
    it->pos = (int)past_pos;
    it->stop_leaf = stop;
    it->stop_pos = (int)first_pos;
}

bool fm_btree_iter_next(struct fm_btree_iter *it, uint64_t *rowid_out)
{
    struct leaf *lf = it->leaf;
    if (lf == NULL)
        return false;
    if (lf == it->stop_leaf && it->pos == it->stop_pos) {
        it->leaf = NULL;
        return false;
    }
    size_t pos = (size_t)it->pos;
    it->started = true;
    *rowid_out = entry_rowid(&lf->e[pos]);
    if (!it->reverse) {
        if (++pos == lf->hdr.n) {
            lf = lf->next;
            pos = 0;
        }
    } else {
        lf = step_back(it->tree, lf, &pos);
    }
    it->leaf = lf;
    it->pos = (int)pos;
    return true;
}

struct check_state {
    struct fm_btree *t;
    struct fm_error *err;
    struct leaf *last_leaf; /* the leaf visited before, in key order */
    size_t n_leaves;
    size_t n_inners;
};

static fm_status check_leaf_links(struct check_state *cs, struct leaf *lf)
{
    if (lf->prev != cs->last_leaf)
        return fm_error_set(cs->err, FM_ERR_CORRUPT,
                            "leaf prev link does not name the leaf before");
    if (cs->last_leaf == NULL && cs->t->head != lf)
        return fm_error_set(cs->err, FM_ERR_CORRUPT,
                            "tree head is not the first leaf");
    if (cs->last_leaf != NULL && cs->last_leaf->next != lf)
        return fm_error_set(cs->err, FM_ERR_CORRUPT,
                            "leaf next link does not name the leaf after");
    cs->last_leaf = lf;
    cs->n_leaves++;
    return FM_OK;
}

/* Checks the subtree of nd; *min_out receives its smallest entry. */
static fm_status check_node(struct check_state *cs, struct node *nd,
                            size_t level, bool is_root, bool rightmost,
                            struct entry *min_out)
{
    size_t cap = level == 0 ? LEAF_CAP : INNER_CAP;
    size_t min = level == 0 ? LEAF_MIN : INNER_MIN;
    if (nd->level != level)
        return fm_error_set(cs->err, FM_ERR_CORRUPT,
                            "wrong level %u in a node at level %zu",
                            (unsigned)nd->level, level);
    if (nd->n == 0 || nd->n > cap || (is_root && level > 0 && nd->n < 2))
        return fm_error_set(cs->err, FM_ERR_CORRUPT,
                            "bad entry count %u in a node at level %zu",
                            (unsigned)nd->n, level);
    if (!is_root && !rightmost && nd->n < min)
        return fm_error_set(cs->err, FM_ERR_CORRUPT,
                            "underfull node at level %zu: %u of %zu", level,
                            (unsigned)nd->n, cap);
    if (level == 0) {
        *min_out = as_leaf(nd)->e[0];
        return check_leaf_links(cs, as_leaf(nd));
    }
    struct inner *in = as_inner(nd);
    cs->n_inners++;
    for (size_t i = 0; i < in->hdr.n; i++) {
        struct entry child_min;
        bool last = rightmost && i + 1 == in->hdr.n;
        fm_status st =
            check_node(cs, in->child[i], level - 1, false, last, &child_min);
        if (st != FM_OK)
            return st;
        if (memcmp(&child_min, &in->key[i], sizeof(child_min)) != 0)
            return fm_error_set(cs->err, FM_ERR_CORRUPT,
                                "inner key %zu at level %zu is not the "
                                "smallest entry of its child",
                                i, level);
    }
    *min_out = in->key[0];
    return FM_OK;
}

static fm_status check_shape(struct fm_btree *t, struct fm_error *err)
{
    if (t->root == NULL) {
        if (t->count != 0 || t->height != 0 || t->head != NULL ||
            t->tail != NULL || t->n_leaves != 0 || t->n_inners != 0)
            return fm_error_set(err, FM_ERR_CORRUPT,
                                "tree without a root is not empty");
        return FM_OK;
    }
    if (t->height == 0 || t->height >= MAX_HEIGHT ||
        (size_t)t->root->level + 1 != t->height)
        return fm_error_set(err, FM_ERR_CORRUPT, "bad height %zu", t->height);
    struct check_state cs = {t, err, NULL, 0, 0};
    struct entry min;
    fm_status st = check_node(&cs, t->root, t->height - 1, true, true, &min);
    if (st != FM_OK)
        return st;
    if (cs.last_leaf != t->tail || t->tail->next != NULL)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "tree tail is not the last leaf");
    if (cs.n_leaves != t->n_leaves || cs.n_inners != t->n_inners)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "node counts %zu/%zu, found %zu/%zu", t->n_leaves,
                            t->n_inners, cs.n_leaves, cs.n_inners);
    return FM_OK;
}

/* Fetches the key of e into buf (cap bytes) and checks hint and length. */
static fm_status check_entry_key(struct fm_btree *t, const struct entry *e,
                                 uint8_t *buf, size_t cap, size_t *len_out,
                                 struct fm_error *err)
{
    uint64_t rowid = entry_rowid(e);
    if ((e->meta & ~META_ROWID_MASK &
         ~((uint64_t)META_LEN_MAX << META_LEN_SHIFT)) != 0)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "stray bits in the entry of row %llu",
                            (unsigned long long)rowid);
    size_t len = t->key_fn(t->key_ctx, rowid, buf, cap);
    if (len > cap)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "key of row %llu is longer than any key added",
                            (unsigned long long)rowid);
    size_t clamped = len < META_LEN_MAX ? len : META_LEN_MAX;
    if (e->hint != key_hint(buf, len) || entry_len(e) != clamped)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "cached prefix of row %llu does not match its key",
                            (unsigned long long)rowid);
    *len_out = len;
    return FM_OK;
}

static int cmp_bytes(const uint8_t *a, size_t a_len, const uint8_t *b,
                     size_t b_len)
{
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return cmp_size(a_len, b_len);
}

/* Walks the leaf chain with full keys: order, cached prefixes, count. */
static fm_status check_order(struct fm_btree *t, uint8_t *bufs[2], size_t cap,
                             struct fm_error *err)
{
    size_t n = 0;
    size_t prev_len = 0;
    uint64_t prev_rowid = 0;
    for (struct leaf *lf = t->head; lf != NULL; lf = lf->next) {
        for (size_t i = 0; i < lf->hdr.n; i++, n++) {
            uint8_t *cur = bufs[n % 2];
            uint8_t *prev = bufs[(n + 1) % 2];
            size_t len = 0;
            fm_status st = check_entry_key(t, &lf->e[i], cur, cap, &len, err);
            if (st != FM_OK)
                return st;
            uint64_t rowid = entry_rowid(&lf->e[i]);
            int c = n == 0 ? 1 : cmp_bytes(cur, len, prev, prev_len);
            if (c < 0 || (c == 0 && (t->unique || rowid <= prev_rowid)))
                return fm_error_set(err, FM_ERR_CORRUPT,
                                    "entry %zu (row %llu) is out of order", n,
                                    (unsigned long long)rowid);
            prev_len = len;
            prev_rowid = rowid;
        }
    }
    if (n != t->count)
        return fm_error_set(err, FM_ERR_CORRUPT,
                            "count is %zu but the leaves hold %zu", t->count,
                            n);
    return FM_OK;
}

fm_status fm_btree_check(struct fm_btree *t, struct fm_error *err)
{
    FM_ASSERT(t != NULL);
    fm_status st = check_shape(t, err);
    if (st != FM_OK)
        return st;
    size_t cap = t->scratch_cap < HINT_BYTES ? HINT_BYTES : t->scratch_cap;
    uint8_t *bufs[2] = {fm_malloc(cap), fm_malloc(cap)};
    if (bufs[0] == NULL || bufs[1] == NULL) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory checking a tree");
        goto out;
    }
    st = check_order(t, bufs, cap, err);
out:
    fm_free(bufs[0]);
    fm_free(bufs[1]);
    return st;
}
