FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home billing
USER billing
EXPOSE 3004 5555
# the SSRF guard is on by default; WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true opts out
ENV WEB_THREADS=32
CMD ["gunicorn", "--worker-class", "web.serving.Worker", "--workers", "2", "--bind", "0.0.0.0:3004", "--timeout", "60", "--keep-alive", "75", "--graceful-timeout", "10", "web.serving:asgi_app()"]
