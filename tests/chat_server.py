"""A small OpenAI-compatible chat-completions server for the judge tests, on 127.0.0.1: a real HTTP server that
answers /v1/chat/completions with a real local causal LM (greedy), or with one fixed reply (a judge with a fixed
habit). It checks the bearer key, as a hosted API does, and lists its model at /v1/models.

    python tests/chat_server.py --port 8123 --key k --model <folder>     # a model answers
    python tests/chat_server.py --port 8123 --key k --reply A            # always "A": a position-biased judge
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model")
    parser.add_argument("--reply")
    args = parser.parse_args()
    lock = threading.Lock()
    answer = (lambda messages, max_tokens: args.reply) if args.reply is not None else model_answers(args.model)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {args.key}":
                return True
            self.reply(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            return False

        def do_GET(self):
            if self.authorised():
                self.reply(200, {"object": "list", "data": [{"id": "test-judge", "object": "model"}]})

        def do_POST(self):
            if not self.authorised():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.reply(404, {"error": {"message": f"no route {self.path}"}})
                return
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if request.get("model") != "test-judge":
                self.reply(404, {"error": {"message": f"The model `{request.get('model')}` does not exist"}})
                return
            with lock:  # one generation at a time: the model is not thread-safe
                content = answer(request["messages"], request.get("max_tokens") or 16)
            self.reply(200, {"object": "chat.completion", "model": "test-judge", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})

        def log_message(self, *args):
            pass

    print("ready", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


def model_answers(folder: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()

    def answer(messages: list[dict], max_tokens: int) -> str:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ids = ids[:, -(model.config.max_position_embeddings - max_tokens):]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return answer


if __name__ == "__main__":
    main()
