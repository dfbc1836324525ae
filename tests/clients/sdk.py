"""The official Python SDKs against `semflow serve` (tests/sdk.rs): Cohere's ClientV2
(/v2/rerank, /v2/embed) and OpenAI's client (/v1/embeddings). Prints one JSON object."""
import json
import sys

import cohere
import openai

base = sys.argv[1]  # http://127.0.0.1:PORT
docs = ["Graphene is a single layer of carbon atoms.", "The capital of France is Paris.", "Copper conducts heat."]
co = cohere.ClientV2(api_key="unused", base_url=base)
rr = co.rerank(model="semflow", query="what is graphene", documents=docs, top_n=2)
emb = co.embed(model="semflow", texts=docs, input_type="search_document", embedding_types=["float"])
q = co.embed(model="semflow", texts=["what is graphene"], input_type="search_query",
             embedding_types=["float"], output_dimension=32)
errors = {}
try:
    co.embed(model="semflow", texts=docs, input_type="image", embedding_types=["float"])
except cohere.core.api_error.ApiError as e:
    errors["input_type"] = [e.status_code, json.dumps(e.body)]
oa = openai.OpenAI(api_key="unused", base_url=base + "/v1")
o = oa.embeddings.create(model="semflow", input=docs)
o64 = oa.embeddings.create(model="semflow", input=docs[:1], dimensions=16)  # SDK default: base64
print(json.dumps({
    "rerank": [[r.index, r.relevance_score] for r in rr.results],
    "cohere_documents": emb.embeddings.float_,
    "cohere_query32": q.embeddings.float_[0],
    "cohere_input_tokens": emb.meta.billed_units.input_tokens,
    "openai": [d.embedding for d in o.data],
    "openai_dims16": o64.data[0].embedding,
    "openai_usage": o.usage.prompt_tokens,
    "errors": errors,
}))
