"""moto_server for benchmarks of large tables: the same answers, without two costs that grow with
the whole table and that DynamoDB does not have.

Usage: python3 scripts/moto_for_bench.py -H 127.0.0.1 -p PORT  (moto_server's arguments)

moto 5.2.1 (moto/dynamodb/models/table.py, moto/dynamodb/models/__init__.py):

- A `Query` of a table (not an index) sorts every item of the table, then keeps those of the
  partition asked for (`Table.query` over `Table.all_items()`): with the 200,000 items of a room
  of 100,000 members, about a second per page, where DynamoDB reads the partition only. Here a
  table `Query` sorts its partition's items only; what it returns is the same, since moto keeps
  only that partition's items anyway.
- `TransactWriteItems` takes a deep copy of each table it touches, once per item of the
  transaction, to restore if the transaction is cancelled: seconds per transaction on such a
  table. Here the copy holds the table's item maps (new maps, the same item objects) and deep
  copies of the items the transaction names, which are the only ones it can change: a cancelled
  transaction restores exactly what it did before.
- A `Query`'s answer goes through moto's model-driven serializer, about 0.4 ms per item of a
  page (two thirds of a page's time, profiled): here it is the same JSON, written by
  `json.dumps`.

The tests use moto_server itself: this is for `scripts/fanout-bench` only.
"""

import copy
import inspect
import json
import sys
import threading
from collections import defaultdict

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import table as table_module
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

Table = table_module.Table
_local = threading.local()

# -- Query: the partition only ------------------------------------------------------------------

_query = Table.query
_query_signature = inspect.signature(_query)
_all_items = Table.all_items


def query(self, *args, **kwargs):
    arguments = _query_signature.bind(self, *args, **kwargs).arguments
    if arguments.get("index_name") is None and self.range_key_attr:
        _local.partition = arguments["hash_key"]
    try:
        return _query(self, *args, **kwargs)
    finally:
        _local.partition = None


def all_items(self):
    partition = getattr(_local, "partition", None)
    if partition is None:
        return _all_items(self)
    items = list(self.items.get(partition, {}).values())
    return sorted(items, key=lambda item: (item.hash_key, item.range_key))


Table.query = query
Table.all_items = all_items

# -- TransactWriteItems: a copy of what the transaction can change --------------------------------

_transact = dynamodb_models.DynamoDBBackend.transact_write_items


def transact_write_items(self, transact_items):
    touched = defaultdict(list)
    for item in transact_items:
        _, op = next(iter(item.items()))
        name = op.get("TableName")
        if name not in self.tables:
            continue
        table = self.tables[name]
        key = op.get("Key")
        if key is None and "Item" in op:
            key = {table.hash_key_attr: op["Item"].get(table.hash_key_attr)}
            if table.range_key_attr:
                key[table.range_key_attr] = op["Item"].get(table.range_key_attr)
        if key is not None:
            touched[name].append(key)
    _local.touched = touched
    try:
        return _transact(self, transact_items)
    finally:
        _local.touched = None


class _Copy:
    """`copy` as moto.dynamodb.models sees it: a table's copy is as cheap as its rollback needs."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        touched = getattr(_local, "touched", None)
        if touched is None or not isinstance(value, Table) or not value.range_key_attr:
            return copy.deepcopy(value, memo)
        backup = copy.copy(value)
        backup.items = defaultdict(dict)
        for hash_key, items in value.items.items():
            backup.items[hash_key] = dict(items)
        for key in touched.get(value.name, []):
            hash_key = DynamoType(key[value.hash_key_attr])
            range_key = DynamoType(key[value.range_key_attr])
            current = value.items.get(hash_key, {}).get(range_key)
            if current is not None:
                backup.items[hash_key][range_key] = copy.deepcopy(current)
        return backup


dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items
dynamodb_models.copy = _Copy()

# -- Query's answer: json.dumps ------------------------------------------------------------------

_query_action = DynamoHandler.query


def query_action(self):
    # DynamoResult has turned the items into DynamoDB JSON already (`dynamo_to_dict`).
    return json.dumps(_query_action(self).result)


DynamoHandler.query = query_action

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
