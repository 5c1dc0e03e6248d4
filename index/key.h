/*
 * key.h: how an index learns the key of a row it holds.
 *
 * Indexes store row ids, not copies of keys (STYLE.md section 5). When an
 * index needs the full key of an entry it holds (a hash collision on equal
 * hashes, or a B+tree comparison its cached key prefix cannot decide), it asks
 * the owner of the rows through this callback.
 */
#ifndef FM_INDEX_KEY_H
#define FM_INDEX_KEY_H

#include "engine/base.h"

/*
 * Writes the encoded, byte-comparable key that row `rowid` has in this index
 * into buf[0..cap) and returns its full length. When the length exceeds cap,
 * nothing useful is in buf and the index calls again with a buffer of at
 * least that size. Must not fail and must not modify the index.
 */
typedef size_t (*fm_key_fn)(void *ctx, uint64_t rowid, uint8_t *buf,
                            size_t cap);

#endif /* FM_INDEX_KEY_H */
