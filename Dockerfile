FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home billing
USER billing
EXPOSE 3004 5555
CMD ["gunicorn", "--worker-class", "gthread", "--workers", "2", "--threads", "32", "--keep-alive", "75", "--bind", "0.0.0.0:3004", "web.app:create_app()"]
