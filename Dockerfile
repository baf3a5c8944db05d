# relay in a container: `docker build -t relay . && docker run -e PORT=8000 -p 8000:8000 relay`
# (set RELAY_SECRET and RELAY_API_KEY for anything reachable by others: see README, Deploy)
FROM python:3.11-slim

WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
COPY relay relay
COPY cli cli
COPY loadtest loadtest
# the locked runtime dependencies, then relay itself (the last line of requirements.txt, ".")
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --create-home --uid 10001 relay
USER relay
ENV PORT=8000
EXPOSE 8000
CMD ["sh", "-c", "exec relay serve --host 0.0.0.0 --port \"$PORT\""]
