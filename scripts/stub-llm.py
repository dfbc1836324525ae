#!/usr/bin/env python3
"""An instant OpenAI-compatible chat stub for timing `semflow synth` without LLM time (BENCHMARKS.md §6):
python3 scripts/stub-llm.py 18777, then SEMFLOW_GENERATOR_URL=http://127.0.0.1:18777/v1."""
import json, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers.get('content-length', 0)); body = json.loads(self.rfile.read(n))
        p = body['messages'][0]['content']
        if 'Choose:' in p:
            persona = [l[4:] for l in p.splitlines() if l.startswith('  - ')][0]
            c = json.dumps({"persona": persona, "query_type": "factual", "difficulty": "university"})
        else:
            d = p.split('<document>\n')[1].split('\n</document>')[0]
            c = json.dumps({"query": "about " + " ".join(d.split()[:8])})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": c}}], "usage": {"prompt_tokens": len(p)//4, "completion_tokens": 12}}).encode()
        self.send_response(200); self.send_header('content-type', 'application/json'); self.send_header('content-length', str(len(out))); self.end_headers(); self.wfile.write(out)
ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
