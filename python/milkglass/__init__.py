"""milkglass: publish sensitive tables under a policy, and query them remotely as Polars lazy frames.

Owner::

    import milkglass
    from milkglass import Policy, Aggregation, Review
    mg = milkglass.connect("http://127.0.0.1:7700", token=OWNER_TOKEN)
    mg.upload_df(df, name="titanic", sanitized_columns=["Name"],
                 policy=Policy(safe_zone=Aggregation(min_agg_size=10), unsafe_handling=Review()))
    mg.reviews(); mg.approve(1); mg.audit(table="titanic")

Scientist::

    import polars as pl
    mg = milkglass.connect("http://127.0.0.1:7700", token=SCIENTIST_TOKEN)
    rdf = mg.table("titanic")
    rdf.group_by("Pclass").agg(pl.col("Survived").mean()).collect()
    mg.dataset("shapes").labels.group_by("class").agg(pl.len()).collect()

Queries are compiled to SQL on the client and run on the server over Arrow Flight SQL, where the owner's
policy decides before any result leaves.
"""

from .client import Client, RemoteDataset, connect
from .errors import (ApiError, FlaggedQueryWarning, InvalidQuery, MilkglassError, QueryHeld, QueryRefused,
                     QueryRejected, UnsupportedExpression)
from .lazy import RemoteGroupBy, RemoteLazyFrame
from .policy import (DP, AtLeastNOf, Aggregation, FalseRule, Log, Policy, Reject, Review, Rule, TrueRule,
                     UnsafeHandling, UserId)

__version__ = "0.1.0"

__all__ = [
    "connect", "Client", "RemoteDataset", "RemoteLazyFrame", "RemoteGroupBy",
    "Policy", "Rule", "Aggregation", "UserId", "AtLeastNOf", "TrueRule", "FalseRule",
    "UnsafeHandling", "Log", "Reject", "Review",
    "MilkglassError", "ApiError", "InvalidQuery", "UnsupportedExpression", "QueryRefused", "QueryRejected",
    "QueryHeld", "FlaggedQueryWarning",
]
